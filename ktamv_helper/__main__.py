"""``python -m ktamv_helper [serve | detect IMAGE... | bench [--photos DIR]]``.

Bare ``python -m ktamv_helper`` runs the JSON-lines protocol on stdin/stdout,
which is how ``ktamv.py`` starts it.
"""

import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
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
    sys.stderr.write("usage: python -m ktamv_helper [serve | detect IMAGE... "
                     "[--json] [--annotate DIR] | bench [--photos DIR]]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
