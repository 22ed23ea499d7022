"""Small utilities shared by detpre's methods (distributed gathering, ...)."""
