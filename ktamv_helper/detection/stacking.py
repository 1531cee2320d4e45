"""Dim frames of a still nozzle summed into one: a longer exposure.

A dim picture's bore is measured right but scored too low to trust: its
edge rises only a few noise levels over the bore, as on textures that are
no nozzle (real photos darkened to x0.2 measured their radius within 1 %
and still scored under the floor; a looser score let darkened textures
through, see docs/benchmarks.md). Summing N frames of a still scene
multiplies its picture by N and its temporal noise (shot and read noise,
independent from frame to frame) by sqrt(N): what an N times longer
exposure gives, so the detector sees a normally exposed frame and judges it
as strictly as any other. Only frames taken after a move has settled (the
helper's freshness rule) are summed, so the nozzle is the same in each.
"""

import cv2
import numpy as np

from ktamv_helper.detection.frame import BLANK_RANGE, histogram_levels

# Frames are summed until their brightest parts (the 99.5th percentile of
# the brightest channel) reach about this level: where a normally exposed
# tip face lies, and below white, so the sum clips nothing the frames did
# not (the brightest 0.5 % may: a clipped face is normal).
STACK_TOP = 200
# Most frames summed: sqrt(8) = 2.8 times the contrast over noise, which
# brings a picture at x0.1 exposure (brightest parts ~25) to a normal one.
# Deeper stacks cost the camera's frame time for each frame.
MAX_STACK = 8


def stack_depth(image):
    """How many frames like ``image`` to sum for a normal exposure.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W) or (H, W, 3)

    Returns
    -------
    int
        1 for a picture that is not dim (its brightest parts above half of
        ``STACK_TOP``) or that even summed would stay blank (its range
        times the depth under ``BLANK_RANGE``: a covered lens, a grey
        card), else ``STACK_TOP // top``, at most ``MAX_STACK``.
    """
    image = np.asarray(image)
    if min(image.shape[:2]) >= 64:
        # The level of the bright parts, not of their noise: averaged over
        # 4x4 pixels (a dim frame's noise lifted its 99.5th percentile to
        # twice the face's level, and summed frames add their noise only
        # as sqrt(N)). A quarter of the size is plenty for the top 0.5 %.
        image = cv2.resize(image, (max(1, image.shape[1] // 4), max(1, image.shape[0] // 4)),
                           interpolation=cv2.INTER_AREA)
    brightest = image if image.ndim == 2 else image.max(axis=2)
    floor, top = histogram_levels(np.ascontiguousarray(brightest), (0.01, 0.995))
    depth = int(min(MAX_STACK, max(1, STACK_TOP // max(top, 1))))
    return depth if (top - floor) * depth >= BLANK_RANGE else 1


def sum_frames(images):
    """The sum of frames of one scene, clipped at white.

    Parameters
    ----------
    images : sequence of ndarray of uint8, all of one shape

    Returns
    -------
    ndarray of uint8
        The summed picture (levels add; above 255 they clip).

    Raises
    ------
    ValueError
        For no frames or frames of different shapes.
    """
    if not images:
        raise ValueError("no frames to sum")
    shape = images[0].shape
    total = np.zeros(shape, np.uint16)
    for image in images:
        if image.shape != shape:
            raise ValueError("frames of shapes %s and %s cannot be summed"
                             % (shape, image.shape))
        total += image
    return np.minimum(total, 255).astype(np.uint8)


def sum_draws(draw):
    """What the helper searches for a dim still scene: frames from
    ``draw()`` (each with its own noise), the first and as many more as its
    :func:`stack_depth` asks for, summed; for benchmarks that replay a
    camera from one picture.

    Parameters
    ----------
    draw : callable
        Returns one uint8 frame of the scene per call.

    Returns
    -------
    ndarray of uint8
    """
    first = draw()
    return sum_frames([first] + [draw() for _ in range(stack_depth(first) - 1)])
