"""medlm.eval"""
