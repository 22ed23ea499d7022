"""Meta-architectures, heads, losses, memories and momentum targets of detpre's methods."""
