"""medlm.models"""
