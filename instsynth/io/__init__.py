"""Every read and write of a file, local or on an object store (storage; its S3 and Parquet helpers)."""
