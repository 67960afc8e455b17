"""The model: frozen backbone, spatial token pooling, temporal encoder, and MV-Former putting them together."""
