-- Puts stream counters back after Redis lost writes: each KEYS[i] (a
-- stream's seq counter) is raised to ARGV[i] where it holds less, so that
-- no seq is ever given twice. A counter only ever rises.
-- Returns the (1-based) indexes of the counters it raised.
local raised = {}
for i, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') < tonumber(ARGV[i]) then
    redis.call('SET', key, ARGV[i])
    raised[#raised + 1] = i
  end
end
return raised
