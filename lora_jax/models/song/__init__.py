"""SongGeneration's (LeVo's) language model: the model, its delay pattern, loss and sampling."""
