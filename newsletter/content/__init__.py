"""The content wing: stories from feeds, sanitising, editions, rendering."""
