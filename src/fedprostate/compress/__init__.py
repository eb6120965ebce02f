"""fedprostate.compress"""
