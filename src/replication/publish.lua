-- Sequences batches of updates atomically, one section per stream group:
-- for each update, take the stream's next seq, append it to the stream's
-- history, keep the latest price / unread notification / signal state;
-- then publish what the section sequenced to the group's channel, so
-- that every node fans out the same messages in the same order. In a
-- Redis Cluster a call has one section (every key of a group shares its
-- hash tag, KEYS[1]'s); one Redis takes every group of a batch in one call.
--
-- ARGV: publish command, history length, max unread, section count, then
--       per section: key prefix, channel, entry count, then 9 fields per
--       entry: kind (m|s|u|n), stream id, time (µs), symbol, signal type,
--       notification key, claim ("" or a claim id), flags, JSON body
--       without its closing brace.
-- flags, for a signal_update: "S" when the body lacks `symbol`, "T" when
-- it lacks `signal_type` (filled from the signal's state).
-- Returns one integer per entry, in order: the seq, 0 for an ingest
-- message another node already took, -1 for a signal_update of an
-- unknown signal.
-- What a section sequenced goes out as ONE message on its group's
-- channel, a `v2` envelope (layout.rs), so a batch crosses Redis as one
-- message per group. Counters and latest prices are read once and
-- written once per section, however many entries of one stream it has.
local publish = ARGV[1]
local window, max_unread, sections = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
-- Numbers become text through '%d' once each: Lua's own conversion of a
-- number is a floating-point printf, the costliest step of this script.
local window_text = ARGV[2]
local function text(x)
  return string.format('%d', x)
end
local out = {}
local i = 5
for _ = 1, sections do
  local p, channel, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local env = {}
  local seqs, again, latest = {}, {}, {}
  local count = 0
  for e = 1, n do
    local kind, sid, t, sym, st, nk, claim, flags, body =
      ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
    i = i + 9
    local take = true
    if claim ~= '' then
      take = redis.call('SET', p .. 'claim:' .. claim, '1', 'NX', 'EX', 20)
    end
    local result = 0
    if take then
      if kind == 's' or kind == 'u' then
        local state_key = p .. 'signal'
        if kind == 'u' then
          local state = redis.call('HGET', state_key, nk)
          if not state then
            result = -1
          else
            local json_sym, old_st, old_sym = string.match(state, '^(.-)\n(.-)\n(.*)$')
            if string.find(flags, 'S', 1, true) then
              body = body .. ',"symbol":' .. json_sym
              sym = old_sym
            end
            if string.find(flags, 'T', 1, true) then
              body = body .. ',"signal_type":"' .. old_st .. '"'
              st = old_st
            end
          end
        end
        if result == 0 then
          -- The JSON form of the symbol, for completing later updates.
          local json_sym = cjson.encode(sym)
          redis.call('HSET', state_key, nk, json_sym .. '\n' .. st .. '\n' .. sym)
        end
      end
      if result == 0 then
        -- A stream's first entry of the section counts in Redis; later
        -- ones here, written back once below.
        local seq = seqs[sid]
        if seq then
          seq = seq + 1
          again[sid] = true
        else
          seq = redis.call('INCR', p .. 'seq:' .. sid)
        end
        seqs[sid] = seq
        local seq_text = text(seq)
        local frame = body .. ',"seq":' .. seq_text .. '}'
        local meta = sym .. '\n' .. st .. '\n' .. nk
        redis.call('XADD', p .. 'h:' .. sid, 'MAXLEN', '~', window_text, seq_text .. '-1', 'f', frame, 'm', meta, 'k', kind)
        if kind == 'm' then
          latest[sym] = frame
        elseif kind == 'n' then
          local user = string.sub(sid, 3)
          local z, h = p .. 'unread:' .. user, p .. 'nf:' .. user
          redis.call('ZADD', z, seq_text, nk)
          redis.call('HSET', h, nk, frame)
          local extra = redis.call('ZCARD', z) - max_unread
          if extra > 0 then
            for _, old in ipairs(redis.call('ZRANGE', z, 0, extra - 1)) do
              redis.call('HDEL', h, old)
            end
            redis.call('ZREMRANGEBYRANK', z, 0, extra - 1)
          end
          redis.call('ZADD', p .. 'known:' .. user, seq_text, nk)
          redis.call('ZREMRANGEBYRANK', p .. 'known:' .. user, 0, text(-(window + 1)))
        end
        -- In pieces, joined once below: every string Lua makes is hashed
        -- whole, so a line per entry would cost a pass over its bytes.
        local at = #env
        env[at + 1], env[at + 2], env[at + 3], env[at + 4], env[at + 5] = kind, '\n', sid, '\n', seq_text
        env[at + 6], env[at + 7], env[at + 8], env[at + 9], env[at + 10] = '\n', t, '\n', meta, '\n'
        env[at + 11], env[at + 12], env[at + 13] = text(#frame), '\n', frame
        count = count + 1
        result = seq
      end
    end
    out[#out + 1] = result
  end
  for sid in pairs(again) do
    redis.call('SET', p .. 'seq:' .. sid, text(seqs[sid]))
  end
  local fields = {}
  for sym, frame in pairs(latest) do
    fields[#fields + 1] = sym
    fields[#fields + 1] = frame
  end
  -- In slices: unpack's results must fit Lua's C stack.
  for from = 1, #fields, 2000 do
    redis.call('HSET', p .. 'latest', unpack(fields, from, math.min(from + 1999, #fields)))
  end
  if count > 0 then
    redis.call(publish, channel, 'v2\n' .. text(count) .. '\n' .. table.concat(env))
  end
end
return out
