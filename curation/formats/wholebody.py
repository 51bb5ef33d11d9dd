"""The COCO-WholeBody 133-keypoint layout (what DWPose writes and TalkVerse reads) and the tables that map
MediaPipe's landmarks onto it. Plain data and numpy; no model is imported here.

Layout (index ranges, COCO-WholeBody / mmpose order, no neck point):
    0-16    body: the 17 COCO keypoints (BODY_NAMES)
    17-22   feet: left big toe, left small toe, left heel, right big toe, right small toe, right heel
    23-90   face: the 68 iBUG-300W points (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67),
            image-left first for a frontal face: iBUG's "right" is the subject's right
    91-111  left hand (the subject's left), 21 points
    112-132 right hand, 21 points; hand order: wrist, then thumb, index, middle, ring, pinky, 4 joints each
            from the palm out (= MediaPipe's HandLandmark order, so the hand table is the identity)

MediaPipe -> COCO-WholeBody:
    body: POSE33_TO_BODY17, the COCO joints by name among PoseLandmarker's 33 (its "left" is the subject's left)
    feet: big toe <- foot index (the tip of the foot), heel <- heel; MediaPipe has no small toe: score 0
    face: FACE478_TO_IBUG68, the MediaPipe-to-dlib correspondence of Peizhi Yan's "Mediapipe_2_Dlib_Landmarks"
          (github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks, the one face-tracking projects copy); where it names
          two mesh points the iBUG point is their mean. One change: the brows' outer ends (iBUG 17, 26) are
          mesh 70 / 300, on MediaPipe's eyebrow contours (as that table's common variant has), instead of
          156 / 383, which lie at the temples below the brows. Every point's region is checked against
          MediaPipe's own FaceLandmarksConnections in the tests.
    hands: HandLandmarker's 21 points as they come; which hand is which from its handedness label
"""

from __future__ import annotations

import numpy as np

N_KPTS = 133
BODY = slice(0, 17)
FEET = slice(17, 23)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)
HANDS = slice(91, 133)
PARTS = {"body": BODY, "feet": FEET, "face": FACE, "left_hand": LEFT_HAND, "right_hand": RIGHT_HAND}

BODY_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
FEET_NAMES = ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")
HAND_NAMES = ("wrist",) + tuple(f"{finger}{j}" for finger in ("thumb", "forefinger", "middle_finger",
                                                               "ring_finger", "pinky_finger") for j in range(1, 5))
NOSE, LEFT_WRIST, RIGHT_WRIST = 0, 9, 10

# MediaPipe PoseLandmarker's 33 landmark names, in index order (mediapipe.tasks...vision.PoseLandmark).
POSE33_NAMES = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
POSE33_HEAD = tuple(range(0, 11))  # nose, eyes, ears, mouth corners
POSE33_HANDS = tuple(range(15, 23))  # wrists, pinkies, index fingers, thumbs

# COCO body joint k <- PoseLandmarker landmark POSE33_TO_BODY17[k] (same joint name).
POSE33_TO_BODY17 = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
# COCO-WholeBody foot point k <- PoseLandmarker landmark (None: MediaPipe has no such point).
POSE33_TO_FEET6 = (31, None, 29, 32, None, 30)

# iBUG-68 point k <- mean of these FaceLandmarker mesh points (indices into the 478-point mesh).
FACE478_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw, from the subject's right ear (image left) over the chin (8) to the left ear
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),
    (400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,),
    # right brow (outer -> inner), left brow (inner -> outer)
    (70,), (63,), (105,), (66,), (107,),
    (336,), (296,), (334,), (293,), (300,),
    # nose bridge (top -> tip), lower nose (image left -> right)
    (168, 6), (197, 195), (5,), (4,), (98,), (97,), (2,), (326,), (327,),
    # right eye: outer corner, upper lid x2, inner corner, lower lid x2
    (33,), (160,), (158,), (133,), (153,), (144,),
    # left eye: inner corner, upper lid x2, outer corner, lower lid x2
    (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lips: right corner, upper lip to the left corner, lower lip back
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    # inner lips: right corner, upper, left corner, lower
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)

# iBUG-68 point k of a mirrored face is point IBUG68_MIRROR[k] of the original.
IBUG68_MIRROR = (
    tuple(range(16, -1, -1))                       # jaw
    + (26, 25, 24, 23, 22, 21, 20, 19, 18, 17)     # brows
    + (27, 28, 29, 30, 35, 34, 33, 32, 31)         # nose
    + (45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40)  # eyes
    + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55)  # outer lips
    + (64, 63, 62, 61, 60, 67, 66, 65)             # inner lips
)


def _face_matrix() -> np.ndarray:
    """(68, 478) averaging matrix: face68_xy = M @ mesh_xy."""
    m = np.zeros((68, 478), np.float32)
    for k, idx in enumerate(FACE478_TO_IBUG68):
        m[k, list(idx)] = 1.0 / len(idx)
    return m


FACE_MATRIX = _face_matrix()


def body_feet_from_pose33(pose: np.ndarray) -> np.ndarray:
    """(33, 3) [x, y, score] PoseLandmarker points -> (23, 3) COCO body + feet (missing feet points: 0)."""
    out = np.zeros((23, 3), np.float32)
    out[:17] = pose[list(POSE33_TO_BODY17)]
    for k, src in enumerate(POSE33_TO_FEET6):
        if src is not None:
            out[17 + k] = pose[src]
    return out


def face68_from_mesh(mesh_xy: np.ndarray) -> np.ndarray:
    """(478 or 468, 2) FaceLandmarker mesh points -> (68, 2) iBUG points."""
    return FACE_MATRIX[:, : mesh_xy.shape[0]] @ mesh_xy.astype(np.float32)


def mirror_wholebody(kpts: np.ndarray, width: float) -> np.ndarray:
    """The keypoints of the horizontally mirrored image ((..., 133, 3)): x -> width - x, left <-> right."""
    perm = np.arange(N_KPTS)
    for a, b in ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)):
        perm[a], perm[b] = b, a
    perm[17:23] = [20, 21, 22, 17, 18, 19]
    perm[FACE] = 23 + np.asarray(IBUG68_MIRROR)
    perm[LEFT_HAND], perm[RIGHT_HAND] = np.arange(112, 133), np.arange(91, 112)
    out = kpts[..., perm, :].copy()
    out[..., 0] = np.where(out[..., 2] > 0, width - out[..., 0], out[..., 0])
    return out


# Skeleton edges for drawing (COCO-WholeBody as mmpose draws it).
BODY_EDGES = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
              (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
              (15, 17), (15, 18), (15, 19), (16, 20), (16, 21), (16, 22))
_FINGER = tuple((a, b) for f in range(5) for a, b in zip([0] + [1 + 4 * f + j for j in range(3)],
                                                          [1 + 4 * f + j for j in range(4)]))
HAND_EDGES = tuple((91 + a, 91 + b) for a, b in _FINGER) + tuple((112 + a, 112 + b) for a, b in _FINGER)
