"""File formats: COCO-WholeBody keypoints, DWPose npz, shard reading, the TalkVerse export."""
