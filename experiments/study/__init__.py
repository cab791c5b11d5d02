"""The card's failure studies: one config per study (ymn/conf/study), one runner, one report."""
