"""Readers: Parquet files, WebDataset tars, img2dataset output folders and URL lists, cut into tasks.

`tasks` plans the input's tasks and reads one in batches (`read_task`, and `read_pairs` for the
trainers); `contract` holds what every reader takes and gives (InputTask, ReadLimits, ReadBatch);
`tables` reads the inputs a task reads as one Arrow table (a Parquet row group, a URL list);
`webdataset` the inputs whose samples are files grouped by key (tars, img2dataset `files`
folders); `uids` the input's uids as a run checks and counts them before any stage.
"""
