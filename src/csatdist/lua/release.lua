-- Give a slot back. KEYS[1]: the account's sorted set, KEYS[2]: the global one. ARGV[1]: lease id.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
