"""fedprostate.fl"""
