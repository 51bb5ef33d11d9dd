"""The bundled audio-driven video DiT: configs, model, flow matching, data, training and sampling."""
