"""The data: tortoise models (one module per aggregate), queries and database set-up."""
