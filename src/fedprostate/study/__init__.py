"""The study runner that tests the published findings (``fedprostate study``)."""
