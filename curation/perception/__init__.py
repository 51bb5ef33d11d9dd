"""Perception models and signals the stages call: faces, bodies, whole-body pose, voice activity, lip signal, SyncNet, image quality, aesthetics, face tracks."""
