-- Count one failed login of a user name. KEYS[1]: the name's sorted set of failure times.
-- ARGV: the most failures kept, the window in microseconds, the key's lifetime in ms, this
-- failure's id (random: two failures in the same microsecond are two members), and the time
-- in microseconds, or '' for Redis's own clock (always '' except in tests).
-- Times are microseconds of Redis's clock, so replicas with skewed clocks agree. Failures out
-- of the window go, then all but the last ARGV[1]; the key expires a window after the last
-- failure, when all of them have left it, so Redis forgets idle names by itself.
local now
if ARGV[5] ~= '' then
  now = tonumber(ARGV[5])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[1]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[1])
