-- Marks a user's notification read, for good: it leaves the unread set,
-- and every node is told, so each tells the user's connections it holds.
-- KEYS[1]: the group's channel (for routing). ARGV: prefix, channel,
-- publish command, user, notification key, the notification_read frame,
-- origin ("node/connection", whose own connection was answered already),
-- time (µs). Returns 1, or 0 when the user has no such notification.
local p, channel, publish, user, key, frame, origin, t =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if redis.call('ZREM', p .. 'unread:' .. user, key) == 1 then
  redis.call('HDEL', p .. 'nf:' .. user, key)
elseif not redis.call('ZSCORE', p .. 'known:' .. user, key) then
  return 0
end
redis.call(publish, channel,
  'v1\nr\nu:' .. user .. '\n0\n' .. t .. '\n' .. origin .. '\n\n' .. key .. '\n' .. frame)
return 1
