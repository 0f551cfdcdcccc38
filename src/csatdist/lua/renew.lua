-- Refresh a held slot so its lease does not expire (long-lived streams renew periodically).
-- KEYS[1]: the account's sorted set, KEYS[2]: the global one. ARGV: lease id, lease in ms.
-- XX: a slot already expired (and maybe taken by someone else) is not brought back.
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now, ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return renewed
