"""Training: clips and batches, the loop, its log, and what several processes share."""
