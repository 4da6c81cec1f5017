"""One module per `splitsim` sub-command; each turns parsed arguments into work and output."""
