"""curate: curate image-text pretraining data and score every data choice end to end."""
