"""``python -m ktamv_helper [serve | detect IMAGE... | bench [--photos DIR]]``.

Bare ``python -m ktamv_helper`` runs the JSON-lines protocol on stdin/stdout,
which is how ``ktamv.py`` starts it.
"""

import sys


USAGE = """\
usage: python -m ktamv_helper [serve | detect IMAGE... [--json] [--annotate DIR] |
                               bench [--photos DIR]]

  serve     (the default) the JSON-lines protocol on stdin/stdout, as ktamv.py
            starts it
  detect    find the nozzle in your own pictures (detect --help for options)
  bench     time the detector (bench --help for options); with --photos DIR,
            score it on your own nozzle photos under known warps
"""


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        sys.stdout.write(USAGE)
        return 0
    command = argv.pop(0) if argv and not argv[0].startswith("-") else "serve"
    if command == "serve":
        from ktamv_helper import server
        return server.main(argv)
    if command == "detect":
        from ktamv_helper import cli_detect
        return cli_detect.main(argv)
    if command == "bench" and any(a == "--photos" or a.startswith("--photos=")
                                  for a in argv):
        from ktamv_helper import bench_photos
        return bench_photos.main(argv)
    if command == "bench":
        from ktamv_helper import bench
        return bench.main(argv)
    sys.stderr.write("unknown command %r\n%s" % (command, USAGE))
    return 2


if __name__ == "__main__":
    sys.exit(main())
