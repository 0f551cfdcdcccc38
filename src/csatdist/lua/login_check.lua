-- A user name's failed logins within the window, and the time they were read at (read only).
-- KEYS[1]: the name's sorted set of failure times. ARGV: the window in microseconds, and the
-- time in microseconds, or '' for Redis's own clock (always '' except in tests).
-- Returns the time in microseconds of Redis's clock (the caller's Retry-After is counted from
-- it, not from the replica's clock), then the times of the failures still in the window, the
-- oldest first, as Redis writes the scores (exact: numbers concatenated in Lua are not).
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local since = now - tonumber(ARGV[1])
local reply = {now}
local stored = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 2, #stored, 2 do
  if tonumber(stored[i]) > since then
    reply[#reply + 1] = stored[i]
  end
end
return reply
