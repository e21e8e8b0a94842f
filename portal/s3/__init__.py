"""The S3 API of the data portal: destinations are buckets, transfers their objects."""
