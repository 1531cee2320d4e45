"""kTAMV vision helper: camera sources, nozzle detection and camera model.

Started by the Klipper extra ``ktamv.py`` as ``python -m ktamv_helper`` and
driven over line-delimited JSON on stdin/stdout (see ``docs/protocol.md``).
Heavy modules (OpenCV, scikit-image) are imported lazily so the helper
announces itself quickly.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
