"""The run's engine: manifest config, clip records, input listing, the Ray pipeline, the output directory and its commits, the audit."""
