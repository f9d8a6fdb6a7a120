"""medlm.data"""
