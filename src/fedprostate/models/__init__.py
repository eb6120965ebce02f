"""fedprostate.models"""
