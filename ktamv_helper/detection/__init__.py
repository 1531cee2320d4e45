"""Find the nozzle bore in camera frames, to a fraction of a pixel.

``frame`` (grey levels, noise), ``candidates`` (dark islands, gradient
voting), ``rings`` (the nested ring structure round a centre), ``edges``
(sub-pixel edge and circle fit) and ``search`` (the choice among bores, or a
refusal). A frame without a nozzle returns None: the detector never guesses.
"""

from ktamv_helper.detection.candidates import find_candidates, vote_candidates
from ktamv_helper.detection.edges import (fit_circle_robust, fit_ellipse_robust,
                                          measure_bore)
from ktamv_helper.detection.frame import estimate_noise, exposure_problem, to_gray
from ktamv_helper.detection.rings import Rings, find_rings
from ktamv_helper.detection.search import (BoreSearch, Detection, choose,
                                           detect_nozzle, find_bore, smaller_bore)
from ktamv_helper.limits import DEFAULT_MIN_RADIUS

__all__ = ["DEFAULT_MIN_RADIUS", "BoreSearch", "Detection", "Rings", "choose",
           "detect_nozzle", "estimate_noise", "exposure_problem", "find_bore",
           "find_candidates", "find_rings", "fit_circle_robust", "fit_ellipse_robust",
           "measure_bore", "smaller_bore", "to_gray", "vote_candidates"]
