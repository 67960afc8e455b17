"""Use a trained model on your own videos: one module per command (embed, align, retrieve, attention, progress),
each a plain library call that the CLI only parses arguments for; `videos` holds what they share. Every output is
written to a temporary file that replaces the target once complete; an existing output is refused unless
`overwrite`."""
