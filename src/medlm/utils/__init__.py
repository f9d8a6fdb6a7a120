"""medlm.utils"""
