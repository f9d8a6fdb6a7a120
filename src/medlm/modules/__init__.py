"""medlm.modules"""
