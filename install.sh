#!/usr/bin/env bash
# Installs kTAMV on a Klipper + Moonraker host (KIAUH layout): the helper's
# venv, the Klippy extra link, the printer.cfg include and template, the
# example macros and Moonraker's update_manager entry. Safe to run again: every
# step checks first and changes only what is missing. `--uninstall` undoes it.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KLIPPER_DIR="$HOME/klipper"
CONFIG_DIR="$HOME/printer_data/config"
VENV_DIR="$HOME/ktamv-env"
MOONRAKER_CONF=""
PYTHON="python3"
PIP_ARGS="${KTAMV_PIP_ARGS:-}"
ORIGIN=""
USE_APT=1
RESTART=0
UNINSTALL=0
REMOVE_VENV=0
ALLOW_ROOT=0
SYSTEM_SITE_PACKAGES=0

BEGIN_MARK="# >>> kTAMV (added by kTAMV's install.sh; 'install.sh --uninstall' removes it)"
END_MARK="# <<< kTAMV"
INCLUDE_LINE="[include ktamv_macros.cfg]"
INCLUDE_RE='^[[:space:]]*\[include[[:space:]]+([^]]*/)?ktamv_macros\.cfg[[:space:]]*\]'
# The old kTAMV's installer included its macros under this name; both files
# define the same macros, so only one of them may be included.
OLD_INCLUDE_RE='^[[:space:]]*\[include[[:space:]]+([^]]*/)?ktamv-macros\.cfg[[:space:]]*\]'
SECTION_RE='^\[ktamv\]'
UPDATE_SECTION="[update_manager ktamv]"
UPDATE_SECTION_RE='^\[update_manager[[:space:]]+ktamv\][[:space:]]*$'
# ... and wrote this header (sic), which Moonraker reads as a client named
# "ktamv]" for the old ~/kTAMV clone and its server.
OLD_UPDATE_SECTION_RE='^\[update_manager[[:space:]]+ktamv\]\][[:space:]]*$'
SAVE_CONFIG_RE='^#\*# <-+ SAVE_CONFIG -+>'
WEBCAM_SECTION="[webcam ktamv]"
WEBCAM_SECTION_RE='^\[webcam[[:space:]]+ktamv\][[:space:]]*$'

usage() {
    cat <<EOF
Usage: ./install.sh [options]

Installs kTAMV for the current user. sudo is used only for apt-get (when
Debian packages are missing) and, with --restart, systemctl restart klipper.

  -k DIR                 Klipper directory (default: ~/klipper)
  -c DIR                 Klipper config directory with printer.cfg
                         (default: ~/printer_data/config)
  -e DIR                 helper venv to create or reuse (default: ~/ktamv-env)
  -m FILE                moonraker.conf (default: <config dir>/moonraker.conf)
  --origin URL           git URL for Moonraker's update_manager
                         (default: this clone's 'origin' remote)
  --python PATH          Python 3 used to create the venv (default: python3)
  --pip-args "ARGS"      extra arguments for 'pip install' (or KTAMV_PIP_ARGS)
  --system-site-packages let the venv use Debian's python3-opencv,
                         python3-numpy and python3-skimage if installed
  --no-apt               do not install Debian packages
  --restart              restart Klipper at the end (sudo systemctl restart klipper)
  --uninstall            remove what install.sh added; your own [ktamv]
                         settings are left in place
  --remove-venv          with --uninstall: also delete the helper venv
  --allow-root           run even as root (containers, CI)
  -h, --help             show this help
EOF
}

say() { printf 'ktamv install: %s\n' "$*"; }
warn() { printf 'ktamv install: WARNING: %s\n' "$*" >&2; }
die() { printf 'ktamv install: ERROR: %s\n' "$*" >&2; exit 1; }

# ~/x reads better than /home/pi/x in config files; Moonraker and Klipper expand it.
tilde_path() {
    case "$1" in
        "$HOME") printf '~' ;;
        "$HOME"/*) printf '~/%s' "${1#"$HOME"/}" ;;
        *) printf '%s' "$1" ;;
    esac
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            -k) [ $# -ge 2 ] || die "-k needs a directory"; KLIPPER_DIR="$2"; shift ;;
            -c) [ $# -ge 2 ] || die "-c needs a directory"; CONFIG_DIR="$2"; shift ;;
            -e) [ $# -ge 2 ] || die "-e needs a directory"; VENV_DIR="$2"; shift ;;
            -m) [ $# -ge 2 ] || die "-m needs a file"; MOONRAKER_CONF="$2"; shift ;;
            --origin) [ $# -ge 2 ] || die "--origin needs a URL"; ORIGIN="$2"; shift ;;
            --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON="$2"; shift ;;
            --pip-args) [ $# -ge 2 ] || die "--pip-args needs a value"; PIP_ARGS="$2"; shift ;;
            --system-site-packages) SYSTEM_SITE_PACKAGES=1 ;;
            --no-apt) USE_APT=0 ;;
            --restart) RESTART=1 ;;
            --uninstall) UNINSTALL=1 ;;
            --remove-venv) REMOVE_VENV=1 ;;
            --allow-root) ALLOW_ROOT=1 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown option '$1'" ;;
        esac
        shift
    done
    # Absolute paths: they end up in config files read by other services.
    KLIPPER_DIR=$(realpath -m -- "$KLIPPER_DIR")
    CONFIG_DIR=$(realpath -m -- "$CONFIG_DIR")
    VENV_DIR=$(realpath -m -- "$VENV_DIR")
    MOONRAKER_CONF=$(realpath -m -- "${MOONRAKER_CONF:-$CONFIG_DIR/moonraker.conf}")
}

# Everything is checked before anything is changed, so a typo in -k or -c
# leaves the machine exactly as it was.
check_environment() {
    if [ "$(id -u)" -eq 0 ] && [ "$ALLOW_ROOT" -eq 0 ]; then
        die "run this as the user that runs Klipper, not as root (install.sh uses sudo itself where needed); --allow-root overrides"
    fi
    if [ "$UNINSTALL" -eq 0 ]; then
        local f
        for f in ktamv.py requirements.txt system-dependencies.json examples/printer.cfg examples/ktamv_macros.cfg; do
            [ -f "$REPO_DIR/$f" ] || die "$REPO_DIR/$f is missing: run install.sh from a complete kTAMV clone"
        done
    fi
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python 3 (sudo apt-get install python3) or pass --python PATH"
    [ -d "$KLIPPER_DIR/klippy/extras" ] || die "no Klipper found at $KLIPPER_DIR (there is no klippy/extras folder); pass your Klipper directory with -k DIR"
    [ -d "$CONFIG_DIR" ] || die "config directory $CONFIG_DIR does not exist; pass the folder that holds printer.cfg with -c DIR"
    [ -f "$CONFIG_DIR/printer.cfg" ] || die "no printer.cfg in $CONFIG_DIR; pass the folder that holds printer.cfg with -c DIR"
    [ -w "$CONFIG_DIR/printer.cfg" ] || die "$CONFIG_DIR/printer.cfg is not writable by $(id -un)"
    if [ "$UNINSTALL" -eq 0 ]; then
        [ -w "$KLIPPER_DIR/klippy/extras" ] || die "$KLIPPER_DIR/klippy/extras is not writable by $(id -un)"
    fi
}

install_debian_packages() {
    [ "$USE_APT" -eq 1 ] || { say "skipping Debian packages (--no-apt)"; return; }
    if ! command -v dpkg >/dev/null 2>&1; then
        warn "not a Debian-based system: install python3-venv and OpenBLAS yourself"
        return
    fi
    local packages missing=() pkg
    # The same list Moonraker installs on updates (system_dependencies).
    packages=$("$PYTHON" -c 'import json, sys
print(" ".join(p.split(";")[0].strip() for p in json.load(open(sys.argv[1]))["debian"]))' \
        "$REPO_DIR/system-dependencies.json") || die "cannot read $REPO_DIR/system-dependencies.json with $PYTHON"
    for pkg in $packages; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "Debian packages present: $packages"
        return
    fi
    say "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq || die "apt-get update failed; fix apt or re-run with --no-apt"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed; install them by hand or re-run with --no-apt"
}

venv_works() {
    [ -x "$VENV_DIR/bin/python" ] && "$VENV_DIR/bin/python" -c 'import sys' >/dev/null 2>&1
}

create_venv() {
    if venv_works; then
        say "reusing helper venv $VENV_DIR"
    else
        if [ -e "$VENV_DIR" ]; then
            # A venv whose Python is gone (OS upgrade) cannot be repaired in place.
            [ -f "$VENV_DIR/pyvenv.cfg" ] || die "$VENV_DIR exists but is not a Python venv; remove it or choose another folder with -e DIR"
            say "helper venv $VENV_DIR is broken (its Python no longer runs); recreating it"
            rm -rf -- "$VENV_DIR"
        fi
        local venv_args=()
        [ "$SYSTEM_SITE_PACKAGES" -eq 0 ] || venv_args+=(--system-site-packages)
        say "creating helper venv $VENV_DIR with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv "${venv_args[@]}" "$VENV_DIR" \
            || die "could not create $VENV_DIR; on Debian/Raspberry Pi OS install python3-venv (sudo apt-get install python3-venv)"
    fi
    local vpy="$VENV_DIR/bin/python"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    # pip before 20.3 cannot read the manylinux tags of current OpenCV wheels
    # and would try to compile OpenCV for hours.
    if ! "$vpy" -c 'import sys, pip; sys.exit(int(pip.__version__.split(".")[0]) < 21)' 2>/dev/null; then
        say "upgrading the venv's pip (too old for current wheels)"
        # shellcheck disable=SC2086
        "$vpy" -m pip install -q $PIP_ARGS --upgrade pip || die "could not upgrade pip in $VENV_DIR"
    fi
    say "installing the helper's requirements (wheels only for OpenCV; this can take a few minutes)"
    # --only-binary keeps a Raspberry Pi from compiling OpenCV if no wheel
    # matches; --prefer-binary picks wheels over newer source releases.
    # shellcheck disable=SC2086
    "$vpy" -m pip install --prefer-binary --only-binary opencv-python-headless \
        $PIP_ARGS -r "$REPO_DIR/requirements.txt" \
        || die "pip could not install $REPO_DIR/requirements.txt into $VENV_DIR (see pip's message above)"
    check_helper_imports
}

# A wheel that imports fine on the build farm can still miss a shared library
# here; say which one and which Debian package usually provides it.
check_helper_imports() {
    local out
    if out=$(cd "$REPO_DIR" && "$VENV_DIR/bin/python" -c 'import cv2, numpy, skimage, ktamv_helper
print("OpenCV", cv2.__version__, "numpy", numpy.__version__, "scikit-image", skimage.__version__)' 2>&1); then
        say "helper venv OK: $(printf '%s' "$out" | tail -n 1)"
        return
    fi
    printf '%s\n' "$out" >&2
    local lib hint=""
    lib=$(printf '%s' "$out" | grep -o 'lib[A-Za-z0-9_+.-]*\.so[.0-9]*' | head -n 1 || true)
    case "$lib" in
        libopenblas*|libblas*|libcblas*|liblapack*) hint="sudo apt-get install libopenblas0" ;;
        libgfortran*) hint="sudo apt-get install libgfortran5" ;;
        libatlas*) hint="sudo apt-get install libatlas3-base" ;;
        libGL.so*) hint="sudo apt-get install libgl1 (or use opencv-python-headless, as requirements.txt does)" ;;
        libgthread*|libglib*) hint="sudo apt-get install libglib2.0-0" ;;
        libopenjp2*) hint="sudo apt-get install libopenjp2-7" ;;
        libavcodec*|libavformat*|libswscale*) hint="sudo apt-get install ffmpeg" ;;
    esac
    if [ -n "$lib" ]; then
        die "the helper venv cannot load $lib${hint:+; try: $hint}; then run install.sh again"
    fi
    die "the helper venv cannot import OpenCV/numpy/scikit-image (error above); run install.sh again after fixing it"
}

link_extra() {
    local link="$KLIPPER_DIR/klippy/extras/ktamv.py" target="$REPO_DIR/ktamv.py"
    if [ -L "$link" ] && [ "$(readlink -- "$link")" = "$target" ]; then
        say "Klipper extra already linked: $link"
    else
        if [ -L "$link" ]; then
            say "replacing the old link $link -> $(readlink -- "$link")"
        elif [ -e "$link" ]; then
            say "moving the existing $link aside to $link.bak"
            mv -f -- "$link" "$link.bak"
        fi
        ln -sfn -- "$target" "$link"
        say "linked $link -> $target"
    fi
    # Keep Klipper's own git tree clean, or Moonraker reports it as dirty.
    local exclude="$KLIPPER_DIR/.git/info/exclude"
    if [ -d "$KLIPPER_DIR/.git/info" ] && ! grep -qxF 'klippy/extras/ktamv.py' "$exclude" 2>/dev/null; then
        printf 'klippy/extras/ktamv.py\n' >>"$exclude"
    fi
}

# What install.sh copied last is remembered by its checksum, so a later run
# can tell an untouched old copy (updated after a `git pull` changed the
# example) from one the user edited (kept, with the differences named).
macros_sum_file() { printf '%s' "$CONFIG_DIR/.ktamv_macros.cfg.sha256"; }
sha_of() { sha256sum -- "$1" | cut -d' ' -f1; }
record_macros_sum() { sha_of "$CONFIG_DIR/ktamv_macros.cfg" >"$(macros_sum_file)"; }
macros_unchanged_since_install() {
    [ -f "$(macros_sum_file)" ] && [ "$(cat -- "$(macros_sum_file)")" = "$(sha_of "$CONFIG_DIR/ktamv_macros.cfg")" ]
}

# Names the [sections] in which file $1 and file $2 differ, one per line:
# "[gcode_macro X] (changed)", "(only in <$2's name>)", "(only in yours)".
macro_differences() {
    "$PYTHON" - "$1" "$2" <<'PY'
import re, sys
def sections(path):
    out, name = {}, None
    for line in open(path, errors="replace"):
        m = re.match(r"\[([^\]]+)\]", line)
        if m:
            name = m.group(1).strip()
        if name is not None:
            out.setdefault(name, []).append(line.rstrip())
    return {k: [l for l in v if l.strip() and not l.lstrip().startswith("#")] for k, v in out.items()}
yours, example = sections(sys.argv[1]), sections(sys.argv[2])
for name in list(example) + [n for n in yours if n not in example]:
    if name not in yours:
        print("[%s] (only in examples/ktamv_macros.cfg)" % name)
    elif name not in example:
        print("[%s] (only in yours)" % name)
    elif yours[name] != example[name]:
        print("[%s] (changed)" % name)
PY
}

copy_macros() {
    local dest="$CONFIG_DIR/ktamv_macros.cfg" example="$REPO_DIR/examples/ktamv_macros.cfg" diffs
    if [ -e "$dest" ]; then
        if cmp -s "$example" "$dest"; then
            say "macros present: $dest"
            [ -f "$(macros_sum_file)" ] || record_macros_sum
        elif macros_unchanged_since_install; then
            diffs=$(macro_differences "$dest" "$example" | paste -sd ',' | sed 's/,/, /g')
            cp -- "$example" "$dest"
            record_macros_sum
            say "updated $dest to the new examples/ktamv_macros.cfg (you had not changed it): ${diffs:-comments only}"
        else
            diffs=$(macro_differences "$dest" "$example" | paste -sd ',' | sed 's/,/, /g')
            if [ -f "$(macros_sum_file)" ]; then
                say "keeping your own $dest: you edited it. It differs from examples/ktamv_macros.cfg in: ${diffs:-comments only}; merge what you want from $example"
            else
                say "keeping your own $dest (install.sh did not record what it copied, so it may be yours). It differs from examples/ktamv_macros.cfg in: ${diffs:-comments only}; merge what you want from $example"
            fi
        fi
        return
    fi
    cp -- "$example" "$dest"
    record_macros_sum
    say "copied the example macros to $dest"
}

# Prints the commented [ktamv] template: examples/printer.cfg with every
# setting commented out, so Klipper starts before the camera URL is filled in.
ktamv_template() {
    local venv_py
    venv_py="$VENV_DIR/bin/python"
    sed -n '/^\[ktamv\]/,$p' "$REPO_DIR/examples/printer.cfg" | sed -e '/^[[:space:]]*$/d' \
        -e "s|^\(#*[[:space:]]*helper_python:\).*|\1 $venv_py|" \
        -e 's/^\([^#]\)/#\1/'
}

# Prints printer.cfg and every file it includes, recursively, the way Klipper
# resolves [include] (relative to the including file's folder, globs allowed). Only
# these count: a config folder also holds Klipper's SAVE_CONFIG backups
# (printer-20240101_120000.cfg) and unused files.
config_files() {
    "$PYTHON" - "$CONFIG_DIR/printer.cfg" <<'PY'
import glob, os, re, sys
# Like Klipper, resolve an include relative to the folder of the including
# file as named (a symlinked printer.cfg: the link's folder, not its
# target's); the real path only tells files already read.
seen, real_seen = [], set()
def walk(path):
    path = os.path.abspath(path)
    real = os.path.realpath(path)
    if real in real_seen or not os.path.isfile(path):
        return
    real_seen.add(real)
    seen.append(path)
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"\s*\[include\s+([^\]]+?)\s*\]", line)
            if m:
                pattern = os.path.join(os.path.dirname(path), os.path.expanduser(m.group(1)))
                for name in sorted(glob.glob(pattern)):
                    walk(name)
walk(sys.argv[1])
print("\n".join(seen))
PY
}

# Prints the first config file in use that matches regex $1.
find_in_config() {
    local f
    while IFS= read -r f; do
        [ -n "$f" ] || continue
        if grep -qE "$1" "$f"; then printf '%s' "$f"; return 0; fi
    done < <(config_files)
    return 1
}

# An active [ktamv] section (old kTAMV users often keep it in an included file).
find_ktamv_section() { find_in_config "$SECTION_RE"; }
find_include() { find_in_config "$INCLUDE_RE"; }
find_old_include() { find_in_config "$OLD_INCLUDE_RE"; }

# Writes $2 into $1 in place (keeps a symlinked printer.cfg a symlink and
# keeps its permissions).
replace_contents() {
    cat -- "$2" >"$1"
    rm -f -- "$2"
}

edit_printer_cfg() {
    local cfg="$CONFIG_DIR/printer.cfg" found section_file block tmp
    if found=$(find_include); then
        say "printer.cfg: ktamv_macros.cfg already included (in $found)"
        if found=$(find_old_include); then
            warn "$found also includes the old kTAMV's ktamv-macros.cfg, which defines the same macros; delete that [include ktamv-macros.cfg] line"
        fi
        return
    fi
    local has_section=0 old_include=0
    if section_file=$(find_ktamv_section); then
        has_section=1
        say "printer.cfg: keeping your existing [ktamv] section in $section_file"
    fi
    if found=$(find_old_include); then
        old_include=1
        warn "$found includes the old kTAMV's ktamv-macros.cfg; not adding $INCLUDE_LINE, because both files define the same macros. To use the new macros, replace that line with $INCLUDE_LINE"
        if [ "$has_section" -eq 1 ]; then
            say "printer.cfg: nothing to add"
            return
        fi
    fi
    if grep -qxF "$BEGIN_MARK" "$cfg"; then
        say "printer.cfg: kTAMV's block already added"
        return
    fi
    block=$(mktemp)
    {
        printf '%s\n' "$BEGIN_MARK"
        [ "$old_include" -eq 1 ] || printf '%s\n' "$INCLUDE_LINE"
        if [ "$has_section" -eq 0 ]; then
            # "##": these stay comments when the whole block is uncommented.
            printf '%s\n' "## To enable kTAMV: uncomment every line from #[ktamv] to #debug_keep" \
                "## (select them, Ctrl+/ in Mainsail or Fluidd), set nozzle_cam_url, restart." \
                "## Every option: $(tilde_path "$REPO_DIR")/README.md (Configuration)"
            ktamv_template
        fi
        printf '%s\n' "$END_MARK"
    } >"$block"
    tmp=$(mktemp)
    # Goes before Klipper's SAVE_CONFIG block, which must stay last, after a
    # blank line; uninstall removes exactly that blank line and the block.
    # Regexes reach awk through the environment: -v would mangle backslashes.
    RE="$SAVE_CONFIG_RE" awk -v blockfile="$block" '
        function emit_block(   line) {
            print ""
            while ((getline line < blockfile) > 0) print line
            close(blockfile)
            done = 1
        }
        { lines[NR] = $0 }
        END {
            n = NR; at = 0
            for (i = 1; i <= n; i++) if (lines[i] ~ ENVIRON["RE"]) { at = i; break }
            if (at > 1 && lines[at - 1] == "") at = at - 1
            for (i = 1; i <= n; i++) {
                if (i == at) emit_block()
                print lines[i]
            }
            if (!done) emit_block()
        }' "$cfg" >"$tmp"
    rm -f -- "$block"
    replace_contents "$cfg" "$tmp"
    if [ "$has_section" -eq 1 ]; then
        say "printer.cfg: added $INCLUDE_LINE"
    elif [ "$old_include" -eq 1 ]; then
        say "printer.cfg: added a commented [ktamv] template"
    else
        say "printer.cfg: added $INCLUDE_LINE and a commented [ktamv] template"
    fi
}

update_manager_entry() {
    local origin="$ORIGIN"
    if [ -z "$origin" ]; then
        origin=$(git -C "$REPO_DIR" remote get-url origin 2>/dev/null || true)
    fi
    [ -n "$origin" ] || return 1
    printf '%s\n' "$BEGIN_MARK" "$UPDATE_SECTION" \
        "type: git_repo" \
        "channel: dev" \
        "path: $(tilde_path "$REPO_DIR")" \
        "origin: $origin" \
        "primary_branch: main" \
        "managed_services: klipper" \
        "virtualenv: $(tilde_path "$VENV_DIR")" \
        "requirements: requirements.txt" \
        "system_dependencies: system-dependencies.json" \
        "$END_MARK"
}

# Prints the path: value of an existing [update_manager ktamv] section.
existing_update_path() {
    RE="$UPDATE_SECTION_RE" awk '
        $0 ~ ENVIRON["RE"] { inside = 1; next }
        /^\[/ { inside = 0 }
        inside && /^path[[:space:]]*[:=]/ { sub(/^path[[:space:]]*[:=][[:space:]]*/, ""); print; exit }
    ' "$MOONRAKER_CONF"
}

same_path() {
    [ -n "$1" ] && [ "$(realpath -m -- "${1/#\~/$HOME}")" = "$REPO_DIR" ]
}

# The old installer's "[update_manager ktamv]]" entry updates the old kTAMV
# clone and would sit next to ours: save moonraker.conf, then remove that
# section (its header up to the next section, minus trailing blank lines, and
# the two blank lines the old installer wrote before it).
replace_old_update_entry() {
    local backup="$MOONRAKER_CONF.before-ktamv" tmp
    [ -e "$backup" ] || cp -p -- "$MOONRAKER_CONF" "$backup"
    tmp=$(mktemp)
    RE="$OLD_UPDATE_SECTION_RE" awk '
        { lines[NR] = $0 }
        END {
            n = NR
            for (i = 1; i <= n; i++) keep[i] = 1
            for (i = 1; i <= n; i++) {
                if (lines[i] !~ ENVIRON["RE"]) continue
                for (e = i + 1; e <= n && lines[e] !~ /^\[/; e++) ;
                e = e - 1
                while (e > i && lines[e] ~ /^[[:space:]]*$/) e--
                for (k = i; k <= e; k++) keep[k] = 0
                for (s = i - 1; s >= 1 && lines[s] ~ /^[[:space:]]*$/; s--) keep[s] = 0
                i = e
            }
            for (i = 1; i <= n; i++) if (keep[i]) print lines[i]
        }' "$MOONRAKER_CONF" >"$tmp"
    replace_contents "$MOONRAKER_CONF" "$tmp"
    warn "moonraker.conf: removed the old kTAMV's [update_manager ktamv]] entry (its header has a stray ']' and it updates the old clone); the file as it was is saved as $backup"
}

edit_moonraker_conf() {
    if [ ! -f "$MOONRAKER_CONF" ]; then
        warn "no $MOONRAKER_CONF: skipping Moonraker's update_manager entry (pass -m FILE if it lives elsewhere)"
        return
    fi
    if grep -qE "$OLD_UPDATE_SECTION_RE" "$MOONRAKER_CONF"; then
        replace_old_update_entry
    fi
    if grep -qE "$UPDATE_SECTION_RE" "$MOONRAKER_CONF"; then
        local path
        path=$(existing_update_path)
        if same_path "$path"; then
            say "moonraker.conf: $UPDATE_SECTION already present"
        else
            warn "moonraker.conf already has $UPDATE_SECTION for '$path' (old kTAMV?); left unchanged. Point its path to $(tilde_path "$REPO_DIR") and its origin to this repository, or remove it and run install.sh again"
        fi
        return
    fi
    local entry
    if ! entry=$(update_manager_entry); then
        warn "this clone has no 'origin' git remote, so Moonraker could not update it; skipped $UPDATE_SECTION (re-run with --origin URL)"
        return
    fi
    # Finish a last line that lacks its newline; uninstall removes exactly
    # the blank line and the entry added below.
    if [ -s "$MOONRAKER_CONF" ] && [ -n "$(tail -c 1 -- "$MOONRAKER_CONF")" ]; then
        printf '\n' >>"$MOONRAKER_CONF"
    fi
    printf '\n%s\n' "$entry" >>"$MOONRAKER_CONF"
    say "moonraker.conf: added $UPDATE_SECTION (restart Moonraker to see it in the update manager)"
    grep -qE '^\[update_manager\][[:space:]]*$' "$MOONRAKER_CONF" \
        || warn "moonraker.conf has no [update_manager] section, so Moonraker's update manager is off; add one to get kTAMV updates"
}

# Prints "HOST PORT" of the active [ktamv] section's preview (the last value
# of each option wins, as in Klipper), or nothing when the preview is off.
preview_setting() {
    "$PYTHON" - <<'PY' "$@"
import re, sys
host, port, inside = "127.0.0.1", 0, False
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        line = line.split("#")[0].rstrip()
        m = re.match(r"\[([^\]]+)\]", line)
        if m:
            inside = m.group(1).strip() == "ktamv"
            continue
        m = re.match(r"(preview_host|preview_port)\s*[:=]\s*(\S*)", line)
        if inside and m:
            if m.group(1) == "preview_host":
                host = m.group(2) or host
            else:
                try:
                    port = int(m.group(2) or 0)
                except ValueError:
                    port = 0
if port > 0:
    print(host, port)
PY
}

# With preview_port set, a [webcam ktamv] entry in moonraker.conf makes
# Mainsail and Fluidd list the annotated preview. Ports 8080-8083 are the
# ones Mainsail's nginx (MainsailOS, KIAUH) forwards /webcam/../webcam4/ to;
# any other port is only reachable directly, with preview_host: 0.0.0.0.
edit_moonraker_webcam() {
    [ -f "$MOONRAKER_CONF" ] || return 0
    local files=() f setting host port prefix stream snapshot
    while IFS= read -r f; do [ -n "$f" ] && files+=("$f"); done < <(config_files)
    setting=$(preview_setting "${files[@]}")
    if [ -z "$setting" ]; then
        say "moonraker.conf: no $WEBCAM_SECTION (preview_port is not set in [ktamv]; set it and run install.sh again to list the preview in Mainsail/Fluidd)"
        return 0
    fi
    if grep -qE "$WEBCAM_SECTION_RE" "$MOONRAKER_CONF"; then
        say "moonraker.conf: $WEBCAM_SECTION already present"
        return 0
    fi
    read -r host port <<<"$setting"
    case "$port" in
        8080) prefix="/webcam/" ;;
        8081) prefix="/webcam2/" ;;
        8082) prefix="/webcam3/" ;;
        8083) prefix="/webcam4/" ;;
        *) prefix="" ;;
    esac
    if [ -n "$prefix" ]; then
        stream="${prefix}?action=stream"; snapshot="${prefix}?action=snapshot"
    elif [ "$host" = "0.0.0.0" ]; then
        stream="http://$(hostname).local:$port/stream"; snapshot="http://$(hostname).local:$port/snapshot"
    else
        warn "moonraker.conf: no $WEBCAM_SECTION added: preview_port $port is not one nginx forwards (8080-8083) and preview_host $host is not reachable from other computers; use preview_port: 8083, or preview_host: 0.0.0.0"
        return 0
    fi
    if [ -s "$MOONRAKER_CONF" ] && [ -n "$(tail -c 1 -- "$MOONRAKER_CONF")" ]; then
        printf '\n' >>"$MOONRAKER_CONF"
    fi
    {
        printf '\n'
        printf '%s\n' "$BEGIN_MARK" "$WEBCAM_SECTION" \
            "# The annotated kTAMV preview (preview_port $port in [ktamv])." \
            "location: printer" "service: mjpegstreamer" "target_fps: 10" \
            "stream_url: $stream" "snapshot_url: $snapshot" "$END_MARK"
    } >>"$MOONRAKER_CONF"
    say "moonraker.conf: added $WEBCAM_SECTION ($stream); restart Moonraker and Mainsail/Fluidd list it as a webcam"
}

clean_moonraker_webcam() {
    [ -f "$MOONRAKER_CONF" ] || return 0
    grep -qE "$WEBCAM_SECTION_RE" "$MOONRAKER_CONF" || return 0
    local tmp
    tmp=$(mktemp)
    # Only our marked entry: a [webcam ktamv] written by hand stays.
    RE="$WEBCAM_SECTION_RE" awk -v begin="$BEGIN_MARK" -v end="$END_MARK" '
        { lines[NR] = $0 }
        END {
            n = NR
            for (i = 1; i <= n; i++) keep[i] = 1
            for (i = 2; i <= n; i++) {
                if (lines[i] !~ ENVIRON["RE"] || lines[i - 1] != begin) continue
                for (e = i + 1; e <= n && lines[e] != end && lines[e] !~ /^\[/; e++) ;
                if (e > n || lines[e] != end) continue
                for (k = i - 1; k <= e; k++) keep[k] = 0
                if (i > 2 && lines[i - 2] == "") keep[i - 2] = 0
            }
            for (i = 1; i <= n; i++) if (keep[i]) print lines[i]
        }' "$MOONRAKER_CONF" >"$tmp"
    if cmp -s "$MOONRAKER_CONF" "$tmp"; then
        rm -f -- "$tmp"
        say "moonraker.conf: left your own $WEBCAM_SECTION in place"
    else
        replace_contents "$MOONRAKER_CONF" "$tmp"
        say "moonraker.conf: removed $WEBCAM_SECTION"
    fi
}

restart_klipper() {
    if [ "$RESTART" -eq 1 ]; then
        say "restarting Klipper"
        as_root systemctl restart klipper || die "could not restart Klipper (sudo systemctl restart klipper)"
    else
        local what="load"
        [ "$UNINSTALL" -eq 0 ] || what="unload"
        say "restart Klipper to $what kTAMV: sudo systemctl restart klipper (or the restart button in Mainsail/Fluidd)"
    fi
}

do_install() {
    install_debian_packages
    create_venv
    link_extra
    copy_macros
    edit_printer_cfg
    edit_moonraker_conf
    edit_moonraker_webcam
    restart_klipper
    say "done. Next: set nozzle_cam_url in the [ktamv] section of printer.cfg, restart, then run KTAMV_TEST"
}

# ---- uninstall ----

unlink_extra() {
    local link="$KLIPPER_DIR/klippy/extras/ktamv.py" target="$REPO_DIR/ktamv.py"
    if [ -L "$link" ] && [ "$(readlink -- "$link")" = "$target" ]; then
        rm -f -- "$link"
        say "removed $link"
    elif [ -e "$link" ] || [ -L "$link" ]; then
        say "left $link alone: it is not this clone's link"
    else
        say "no Klipper extra link to remove"
    fi
    local exclude="$KLIPPER_DIR/.git/info/exclude" tmp
    if [ -f "$exclude" ] && grep -qxF 'klippy/extras/ktamv.py' "$exclude"; then
        tmp=$(mktemp)
        grep -vxF 'klippy/extras/ktamv.py' "$exclude" >"$tmp" || true
        replace_contents "$exclude" "$tmp"
    fi
}

# Removes our marked block (and the blank line before it) when nothing in it
# is active apart from the include; otherwise removes only the include and the
# markers and keeps the user's lines. Any other include line goes too.
clean_printer_cfg() {
    local cfg="$CONFIG_DIR/printer.cfg" tmp
    tmp=$(mktemp)
    RE="$INCLUDE_RE" awk -v begin="$BEGIN_MARK" -v end="$END_MARK" '
        { lines[NR] = $0 }
        END {
            n = NR
            for (i = 1; i <= n; i++) keep[i] = 1
            for (i = 1; i <= n; i++) {
                if (lines[i] != begin) continue
                for (j = i + 1; j <= n && lines[j] != end; j++) ;
                if (j > n) continue
                active = 0
                for (k = i + 1; k < j; k++)
                    if (lines[k] !~ /^[[:space:]]*(#.*)?$/ && lines[k] !~ ENVIRON["RE"]) active = 1
                if (!active) {
                    for (k = i; k <= j; k++) keep[k] = 0
                    if (i > 1 && lines[i - 1] == "") keep[i - 1] = 0
                } else {
                    keep[i] = 0; keep[j] = 0
                }
                i = j
            }
            for (i = 1; i <= n; i++) if (lines[i] ~ ENVIRON["RE"]) keep[i] = 0
            for (i = 1; i <= n; i++) if (keep[i]) print lines[i]
        }' "$cfg" >"$tmp"
    if cmp -s "$cfg" "$tmp"; then
        rm -f -- "$tmp"
        say "printer.cfg: nothing of kTAMV's to remove"
    else
        replace_contents "$cfg" "$tmp"
        say "printer.cfg: removed $INCLUDE_LINE and kTAMV's template"
    fi
    local section_file
    if section_file=$(find_ktamv_section); then
        warn "your [ktamv] section in $section_file was left in place; Klipper will not start with it once kTAMV is removed, so delete or comment it out"
    fi
    if grep -qE '^#\*#[[:space:]]*\[ktamv\]' "$cfg"; then
        warn "the SAVE_CONFIG block at the end of printer.cfg has a [ktamv] section (the saved camera calibration); Klipper will not start with it once kTAMV is removed, so delete its '#*#' lines"
    fi
}

remove_macros() {
    local dest="$CONFIG_DIR/ktamv_macros.cfg"
    if [ -e "$dest" ]; then
        if cmp -s "$REPO_DIR/examples/ktamv_macros.cfg" "$dest" || macros_unchanged_since_install; then
            rm -f -- "$dest"
            say "removed $dest"
        else
            say "left $dest in place: you changed it (delete it yourself if you no longer need it)"
        fi
    fi
    rm -f -- "$(macros_sum_file)"
}

# T macros (in any config file in use but the macros file itself) that still
# call _KTAMV_APPLY_TOOL_OFFSET would fail with "Unknown command" once it is gone.
warn_about_offset_calls() {
    local f hits
    while IFS= read -r f; do
        [ -n "$f" ] || continue
        [ "$(realpath -- "$f")" != "$(realpath -m -- "$CONFIG_DIR/ktamv_macros.cfg")" ] || continue
        hits=$(grep -nE '^[[:space:]]+_KTAMV_APPLY_TOOL_OFFSET([[:space:]]|$)' -- "$f" | cut -d: -f1 | paste -sd ',' || true)
        [ -z "$hits" ] || warn "$f still calls _KTAMV_APPLY_TOOL_OFFSET (line ${hits//,/, }), which came with ktamv_macros.cfg; remove those lines, or those tool changes will stop with \"Unknown command\""
    done < <(config_files)
}

clean_moonraker_conf() {
    [ -f "$MOONRAKER_CONF" ] || return 0
    grep -qE "$UPDATE_SECTION_RE" "$MOONRAKER_CONF" || { say "moonraker.conf: no $UPDATE_SECTION to remove"; return 0; }
    local path ours=0 tmp
    path=$(existing_update_path)
    same_path "$path" && ours=1
    if [ "$ours" -eq 0 ]; then
        say "moonraker.conf: left $UPDATE_SECTION alone: it points at '$path', not this clone"
        return 0
    fi
    tmp=$(mktemp)
    # Our entry is a blank line, BEGIN_MARK, the section and END_MARK. An entry
    # written by hand runs to the next section header, minus trailing blanks.
    RE="$UPDATE_SECTION_RE" awk -v begin="$BEGIN_MARK" -v end="$END_MARK" '
        { lines[NR] = $0 }
        END {
            n = NR
            for (i = 1; i <= n; i++) keep[i] = 1
            for (i = 1; i <= n; i++) {
                if (lines[i] !~ ENVIRON["RE"]) continue
                s = (i > 1 && lines[i - 1] == begin) ? i - 1 : i
                for (e = i + 1; e <= n && lines[e] !~ /^\[/ && lines[e] != end; e++) ;
                if (e > n || lines[e] != end) {
                    e = e - 1
                    while (e > i && lines[e] ~ /^[[:space:]]*$/) e--
                }
                for (k = s; k <= e; k++) keep[k] = 0
                if (s > 1 && lines[s - 1] == "") keep[s - 1] = 0
                i = e
            }
            for (i = 1; i <= n; i++) if (keep[i]) print lines[i]
        }' "$MOONRAKER_CONF" >"$tmp"
    replace_contents "$MOONRAKER_CONF" "$tmp"
    say "moonraker.conf: removed $UPDATE_SECTION (restart Moonraker)"
}

remove_venv() {
    if [ "$REMOVE_VENV" -eq 1 ] && [ -d "$VENV_DIR" ]; then
        [ -f "$VENV_DIR/pyvenv.cfg" ] || die "$VENV_DIR is not a Python venv; not deleting it"
        rm -rf -- "$VENV_DIR"
        say "removed the helper venv $VENV_DIR"
    elif [ -d "$VENV_DIR" ]; then
        say "kept the helper venv $VENV_DIR (add --remove-venv to delete it)"
    fi
}

do_uninstall() {
    warn_about_offset_calls
    unlink_extra
    clean_printer_cfg
    remove_macros
    clean_moonraker_conf
    clean_moonraker_webcam
    remove_venv
    restart_klipper
    say "uninstalled"
}

main() {
    parse_args "$@"
    check_environment
    if [ "$UNINSTALL" -eq 1 ]; then do_uninstall; else do_install; fi
}

main "$@"
