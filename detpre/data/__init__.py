"""Data: data set registration, proposals, view transforms, mappers and loaders."""
