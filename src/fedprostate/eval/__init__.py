"""fedprostate.eval"""
