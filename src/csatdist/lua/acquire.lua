-- Take one in-flight slot for an account, if both its limit and the global limit allow.
-- KEYS[1]: the account's sorted set, KEYS[2]: the global sorted set (same hash slot).
-- ARGV: per-account limit, global limit, lease in ms, lease id.
-- Members are lease ids scored by the time they were taken; leases older than the lease time
-- are dropped first, so a replica that died holding slots cannot leak them.
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - lease)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - lease)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then
  return {0, held, 'account'}
end
local total = redis.call('ZCARD', KEYS[2])
if total >= tonumber(ARGV[2]) then
  return {0, total, 'global'}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], lease)
redis.call('PEXPIRE', KEYS[2], lease)
return {1, held + 1, 'ok'}
