"""medlm.callbacks"""
