"""talkcurate: curate raw footage of people talking into a training-ready audio-video dataset."""

__version__ = "0.1.0"
