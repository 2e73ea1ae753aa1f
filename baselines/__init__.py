"""The comparison methods of the paper's Table 1, behind FusionRoute's generator interface."""
