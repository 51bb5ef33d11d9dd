"""Media I/O: ffmpeg/ffprobe, frame sampling, pose previews."""
