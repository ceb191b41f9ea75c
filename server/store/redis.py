"""The shared queue: Redis (>= 6.2) with Streams, for several Kiln processes on several machines.

Every rule of `server.store` holds as it does on SQLite (the contract tests run on both); what
differs is that many nodes act on the queue at once, so every change of a request's state is one
Lua script, atomic on the Redis server, and every node hears of the changes the others make.

Data layout, under a prefix (`kiln` unless the URL says `?prefix=NAME`), `P` below:

- `P:job:ID` a hash: endpoint, owner, priority, round, seq, status, times, attempts, crashes,
  running, lease_owner, entry (its stream entry while leased), cancel_requested, webhook_url,
  result status, error, error_type, metrics. Status reads (`info`) read only this hash.
- `P:payload:ID` (a string), `P:result:ID` (a hash: body, headers), `P:logs:ID` (a list of
  `[timestamp, level, message]`; a line's seq is its index + 1), `P:attempts:ID` (the attempt log:
  `["claimed", worker, time]` for each lease, `["running", worker, time]` each time it starts running).
- The waiting requests in service order: sorted sets whose members sort by their bytes,
  `PRIORITY:ROUND:SEQ:ID` with fixed-width numbers, so `ZRANK` is the queue position, in O(log n):
  `P:q` (all of them), `P:q:ep:ENDPOINT` (one endpoint's: `fal_max_queue_length`, batches,
  affinity) and `P:q:suspects` (those whose worker died while running them). `P:rounds:PRIO:OWNER`
  holds an owner's waiting rounds (a new request's round is one after the latest),
  `P:clock:PRIO` the round now served, `P:seq` the arrival counter, `P:deadlines` the start
  deadlines of waiting requests.
- Leases: `P:stream:ENDPOINT`, a stream per endpoint with the consumer group `workers`. A claim
  takes the batch in fair order, appends it to its endpoint's stream and reads it with
  `XREADGROUP GROUP workers WORKER COUNT n` in the same script, so the stream's pending entries
  list is the ledger of who runs what (`XPENDING` per endpoint is the IN_PROGRESS count; `XACK`
  and `XDEL` end an entry when its request completes or is requeued). Heartbeats `XCLAIM` the
  worker's own entries (their idle time is the time since its last heartbeat, as `XPENDING`
  shows) and move the request's expiry in `P:leases`; the janitor reclaims only requests whose
  expiry passed, i.e. whose worker stopped beating. Expiries are on the nodes' clocks (keep them in
  NTP sync, well within `--lease-seconds`), which is also what lets the tests drive time.
- Waiting workers: a worker that `next_jobs` finds nothing for waits in `P:idle` (until when, with its
  claim settings in `P:idle:settings`) and blocks in `BLPOP P:inbox:WORKER`. Whatever makes a request
  claimable (a submit, a requeue, a completion, a claim that leaves some) leases it to a waiting
  worker in the same script and pushes the batch (ids, fields, payloads) to its inbox, so Redis
  answers the submit and wakes the worker after one fsync, with no claim or read in between. The
  waiting and the inbox are not written to the AOF or replicas: they are worth no fsync; a worker
  that a restart forgot asks again within a second. A batch it lost (or whose BLPOP reply was lost)
  goes back to the queue, uncounted, when the worker asks again: a worker asks only once it has
  finished what it was given, so a lease it still holds then never reached it (its stream entries
  find them; the attempt log says `returned`). A handed batch is marked running, as a claimed one
  is: a worker that dies within a second of asking for work is charged for what it was handed in
  that second.
- `P:active:suspects` the suspects now running; `P:done` completion times (retention);
  `P:history:OWNER` an owner's requests by creation time; `P:endpoints` every endpoint seen.
- Webhooks: `P:webhook:ID` (url, owner, destination, attempts, next try, delivered) and
  `P:webhooks:due` (next try times). Taking an attempt (`webhook_sending`) is one script that
  moves the next try forward, so exactly one node sends each attempt.
- `P:events`, a stream (capped) of changes: every script appends what it changed, and each node
  reads it (`XREAD BLOCK`) into its own `ChangeFeed`, which wakes its status streams, sync waits
  and deadline enforcer, and relays cancellations to the worker running the request. A node that loses
  its connection resumes from the last event it read and wakes every waiter once.
- `P:nodes` / `P:nodes:beat` each node's record and last heartbeat; `P:secret:NAME` the shared
  keys (`SET NX`: the first node to start makes them).

Completion is idempotent in one step: the script completes only a request that is not COMPLETED,
and only that call stores the result and schedules the webhook, so a redelivered duplicate never
overwrites a result or sends a second webhook.

Durability is Redis's: run it with `appendonly yes` and `appendfsync always` for SQLite's promise
(an accepted request survives a kill -9 or a power cut); `everysec` may lose the last second.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from server.errors import Cancelled, KilnError, QueueFull, StartTimeout
from server.store import (
    CancelOutcome,
    Job,
    JobInfo,
    JobResult,
    JobStatus,
    JobStore,
    LogEntry,
    NODE_TIMEOUT_SECONDS,
    NewJob,
    Priority,
    QueueUnavailable,
    StoreClosed,
    WebhookDelivery,
    stored_result,
    webhook_destination,
)
from server.store.feed import ChangeFeed

logger = logging.getLogger(__name__)

NONE = "\x00none"  # a missing value, in the arguments of the scripts
EVENTS_KEPT = 10_000
INFO_FIELDS = (
    "endpoint", "owner", "priority", "status", "created_at", "started_at", "completed_at", "attempts",
    "cancel_requested", "result_status", "error", "error_type", "metrics",
)
# what a worker reads of a job it claims, besides its payload
JOB_FIELDS = (*INFO_FIELDS, "webhook_url")
# nodes not heard of for this long are removed from the registry
NODE_FORGET_SECONDS = 3600.0
# How long the log writer lets lines gather before it writes them: the lines of a request shorter than
# this go with its completion, in the same script, and a long one's lines reach other nodes this late.
LOG_WRITE_DELAY_SECONDS = 0.2
# How long past its wait a waiting worker may still be handed work: what it is handed as its wait
# ends, it takes with its next claim.
WAIT_MARGIN_SECONDS = 1.0

# -- the scripts -------------------------------------------------------------------------------
# Each script's ARGV[1] is the key prefix; helpers shared by all of them come first.

PRELUDE = r"""
local P = ARGV[1]
local NONE = '\0none'
local function jk(rid) return P .. ':job:' .. rid end
local function event(kind, rid, extra)
  redis.call('XADD', P .. ':events', 'MAXLEN', '~', EVENTS_KEPT, '*', 't', kind, 'id', rid or '', 'x', extra or '')
end
local function load(rid)
  local flat = redis.call('HGETALL', jk(rid))
  if #flat == 0 then return nil end
  local job = {}
  for i = 1, #flat, 2 do job[flat[i]] = flat[i + 1] end
  return job
end
local function rid_of(qkey) return string.match(qkey, '^[^:]*:[^:]*:[^:]*:(.*)$') end
local function unqueue(rid, job)
  redis.call('ZREM', P .. ':q', job.qkey)
  redis.call('ZREM', P .. ':q:ep:' .. job.endpoint, job.qkey)
  redis.call('ZREM', P .. ':q:suspects', job.qkey)
  redis.call('ZREM', P .. ':rounds:' .. job.priority .. ':' .. job.owner, rid)
  redis.call('ZREM', P .. ':deadlines', rid)
end
local function enqueue(rid, job)
  redis.call('ZADD', P .. ':q', 0, job.qkey)
  redis.call('ZADD', P .. ':q:ep:' .. job.endpoint, 0, job.qkey)
  redis.call('ZADD', P .. ':rounds:' .. job.priority .. ':' .. job.owner, job.round, rid)
  if tonumber(job.crashes) > 0 then redis.call('ZADD', P .. ':q:suspects', 0, job.qkey) end
  if job.start_deadline ~= '' then redis.call('ZADD', P .. ':deadlines', job.start_deadline, rid) end
end
local function unlease(rid, job)
  redis.call('ZREM', P .. ':leases', rid)
  redis.call('SREM', P .. ':active:suspects', rid)
  if job.entry and job.entry ~= '' then
    local stream = P .. ':stream:' .. job.endpoint
    redis.call('XACK', stream, 'workers', job.entry)
    redis.call('XDEL', stream, job.entry)
  end
  redis.call('HDEL', jk(rid), 'entry')
end
-- Leases the next request and the batch that goes with it to `worker` (see `claim`); returns their ids.
-- `s`: the worker's settings (batch, lease, affinity, limits: endpoint -> batch, warm: endpoint -> true).
local function lease_next(worker, now_text, s)
  local now = tonumber(now_text)
  local expiry, cutoff = now + s.lease, now - s.affinity
  local function usable(rid, skip_suspects)
    local deadline, crashes = unpack(redis.call('HMGET', jk(rid), 'start_deadline', 'crashes'))
    if deadline and deadline ~= '' and tonumber(deadline) < now then return false end
    return not (skip_suspects and crashes ~= '0')
  end
  -- the first usable member of a sorted set within [lo, hi], or nil; `skip` is a member to leave out
  local function first(key, lo, hi, skip_suspects, skip)
    local offset = 0
    while offset < 4096 do
      local chunk = redis.call('ZRANGEBYLEX', key, lo, hi, 'LIMIT', offset, 32)
      if #chunk == 0 then return nil end
      for _, qkey in ipairs(chunk) do
        if qkey ~= skip and usable(rid_of(qkey), skip_suspects) then return qkey end
      end
      offset = offset + 32
    end
    return nil
  end

  if redis.call('SCARD', P .. ':active:suspects') > 0 then return {} end  -- a suspect runs alone
  local chosen, head
  local suspect = first(P .. ':q:suspects', '-', '+', false, nil)
  if suspect then
    if redis.call('ZCARD', P .. ':leases') > 0 then return {} end  -- it waits until what runs has finished
    chosen, head = suspect, suspect
  else
    head = first(P .. ':q', '-', '+', false, nil)
    if not head then return {} end
    chosen = head
    local endpoint, priority, created = unpack(redis.call('HMGET', jk(rid_of(head)), 'endpoint', 'priority', 'created_at'))
    if next(s.warm) ~= nil and not s.warm[endpoint] and tonumber(created) > cutoff then
      for candidate_endpoint in pairs(s.warm) do
        local candidate = first(P .. ':q:ep:' .. candidate_endpoint, '[' .. priority .. ':', '(' .. priority .. ';', true, nil)
        if candidate and (chosen == head or candidate < chosen) then chosen = candidate end
      end
    end
  end
  local ids = {rid_of(chosen)}
  local endpoint = redis.call('HGET', jk(ids[1]), 'endpoint')
  if not suspect then
    local limit = math.max(1, s.limits[endpoint] or s.batch)
    local offset = 0
    while #ids < limit and offset < 4096 do
      local chunk = redis.call('ZRANGEBYLEX', P .. ':q:ep:' .. endpoint, '-', '+', 'LIMIT', offset, 32)
      if #chunk == 0 then break end
      for _, qkey in ipairs(chunk) do
        if #ids < limit and qkey ~= chosen and usable(rid_of(qkey), true) then table.insert(ids, rid_of(qkey)) end
      end
      offset = offset + 32
    end
  end

  local stream = P .. ':stream:' .. endpoint
  if redis.call('EXISTS', stream) == 0 then redis.call('XGROUP', 'CREATE', stream, 'workers', '$', 'MKSTREAM') end
  local leased = {}
  for _, rid in ipairs(ids) do
    local job = load(rid)
    unqueue(rid, job)
    redis.call('HSET', jk(rid), 'status', 'IN_PROGRESS', 'lease_owner', worker, 'running', '1', 'started_at', now_text,
               'attempts', tonumber(job.attempts) + 1)
    redis.call('ZADD', P .. ':leases', expiry, rid)
    if job.crashes ~= '0' then redis.call('SADD', P .. ':active:suspects', rid) end
    redis.call('RPUSH', P .. ':attempts:' .. rid, cjson.encode({'claimed', worker, now}), cjson.encode({'running', worker, now}))
    redis.call('XADD', stream, '*', 'id', rid)
    leased[rid] = true
  end
  local read = redis.call('XREADGROUP', 'GROUP', 'workers', worker, 'COUNT', #ids + 16, 'STREAMS', stream, '>')
  for _, entry in ipairs(read[1] and read[1][2] or {}) do
    local rid = entry[2][2]
    if leased[rid] then
      redis.call('HSET', jk(rid), 'entry', entry[1])
    else  -- not ours (a stray entry): nothing may stay pending without a lease
      redis.call('XACK', stream, 'workers', entry[1])
      redis.call('XDEL', stream, entry[1])
    end
  end
  local head_priority, head_round = unpack(redis.call('HMGET', jk(rid_of(head)), 'priority', 'round'))
  local clock = P .. ':clock:' .. head_priority
  if tonumber(redis.call('GET', clock) or '0') < tonumber(head_round) then redis.call('SET', clock, head_round) end
  for _, rid in ipairs(ids) do event('job', rid) end
  return ids
end
-- Workers waiting for work (`next_jobs`): `P:idle` their deadlines, `P:idle:settings` their settings.
-- Only this server keeps these (not the AOF, not replicas): a waiting worker is not worth an fsync,
-- and one that a restart forgot asks again within a second.
local function unrecorded(fn)
  redis.set_repl(redis.REPL_NONE)
  fn()
  redis.set_repl(redis.REPL_ALL)
end
local function stop_waiting(worker)
  unrecorded(function()
    redis.call('ZREM', P .. ':idle', worker)
    redis.call('HDEL', P .. ':idle:settings', worker)
  end)
end
-- {id, JOB_FIELDS values, payload} of each leased id: what a worker needs of a job it takes
local function leased_rows(ids)
  local rows = {}
  for _, rid in ipairs(ids) do
    table.insert(rows, {rid, redis.call('HMGET', jk(rid), unpack(JOB_FIELDS)), redis.call('GET', P .. ':payload:' .. rid)})
  end
  return rows
end
-- Leases waiting requests to waiting workers, in the same step (and fsync) as the change that made
-- them claimable; each worker's batch goes on its list `P:inbox:WORKER`, where it is blocked in BLPOP,
-- whole, so that it needs no read after. The list is not recorded either: the leases are, and a
-- batch a restart lost goes back to the queue when its worker next asks (`CLAIM`).
local function dispatch(now_text)
  local idle = P .. ':idle'
  if redis.call('ZCARD', idle) == 0 then return end
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', idle, '-inf', now_text)) do stop_waiting(gone) end
  for _, worker in ipairs(redis.call('ZRANGEBYSCORE', idle, '(' .. now_text, '+inf')) do
    local ids = lease_next(worker, now_text, cjson.decode(redis.call('HGET', idle .. ':settings', worker)))
    if #ids == 0 then return end
    stop_waiting(worker)
    unrecorded(function() redis.call('RPUSH', P .. ':inbox:' .. worker, cjson.encode(leased_rows(ids))) end)
  end
end
local function requeue(rid, job, now, fields)
  unlease(rid, job)
  redis.call('HSET', jk(rid), 'status', 'IN_QUEUE', 'lease_owner', '', 'running', '0', unpack(fields))
  enqueue(rid, job)
  event('job', rid)
  dispatch(now)
end
-- A request leased to a worker that never took it goes back to its place in the queue, the attempt
-- uncounted; its attempt log says so, since the lease already logged it running.
local function give_back_untaken(rid, job, worker, now)
  requeue(rid, job, now, {'attempts', math.max(tonumber(job.attempts) - 1, 0)})
  redis.call('RPUSH', P .. ':attempts:' .. rid, cjson.encode({'returned', worker, tonumber(now)}))
end
-- The requests leased to `worker`: its entries pending in the endpoints' streams.
local function leased_to(worker)
  local ids = {}
  for _, endpoint in ipairs(redis.call('SMEMBERS', P .. ':endpoints')) do
    local stream = P .. ':stream:' .. endpoint
    if redis.call('EXISTS', stream) == 1 then
      for _, pending in ipairs(redis.call('XPENDING', stream, 'workers', '-', '+', 4096, worker)) do
        local entry = redis.call('XRANGE', stream, pending[1], pending[1])[1]
        local rid = entry and entry[2][2]
        if rid then
          local status, owner = unpack(redis.call('HMGET', jk(rid), 'status', 'lease_owner'))
          if status == 'IN_PROGRESS' and owner == worker then table.insert(ids, rid) end
        end
      end
    end
  end
  return ids
end
local function add_log(rid, now, level, message)
  redis.call('RPUSH', P .. ':logs:' .. rid, cjson.encode({tonumber(now), level, message}))
end
-- r: status_code, error, error_type, metrics, body, headers (error and error_type may be NONE)
local function complete(rid, job, now, r)
  if job.status == 'IN_QUEUE' then unqueue(rid, job) elseif job.status == 'IN_PROGRESS' then unlease(rid, job) end
  local fields = {'status', 'COMPLETED', 'completed_at', now, 'result_status', r[1], 'metrics', r[4],
                  'running', '0', 'lease_owner', ''}
  if r[2] ~= NONE then table.insert(fields, 'error'); table.insert(fields, r[2]) end
  if r[3] ~= NONE then table.insert(fields, 'error_type'); table.insert(fields, r[3]) end
  redis.call('HSET', jk(rid), unpack(fields))
  redis.call('HSET', P .. ':result:' .. rid, 'body', r[5], 'headers', r[6])
  redis.call('ZADD', P .. ':done', now, rid)
  if job.webhook_url ~= '' then
    redis.call('HSET', P .. ':webhook:' .. rid, 'url', job.webhook_url, 'owner', job.owner,
               'destination', job.destination, 'attempts', 0, 'next_attempt_at', now)
    redis.call('ZADD', P .. ':webhooks:due', now, rid)
  end
  event('job', rid)
  dispatch(now)  -- a suspect that ended, or a batch's place freed, may let another run
end
""".replace("EVENTS_KEPT", str(EVENTS_KEPT)).replace("JOB_FIELDS", "{" + ", ".join(f"'{name}'" for name in JOB_FIELDS) + "}")

# ARGV: prefix, id, endpoint, owner, priority, now, start deadline, webhook url, destination,
# max queue length, payload. Returns {position} or {-1, waiting} when the queue is full.
SUBMIT = r"""
local rid, endpoint, owner, priority = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local existing = redis.call('HGET', jk(rid), 'qkey')
if existing then  -- a retried submit (the reply was lost): the same request
  return {redis.call('ZRANK', P .. ':q', existing) or 0}
end
if ARGV[10] ~= '' then
  local waiting = redis.call('ZCARD', P .. ':q:ep:' .. endpoint)
  if waiting >= tonumber(ARGV[10]) then return {-1, waiting} end
end
local seq = redis.call('INCR', P .. ':seq')
local serving = tonumber(redis.call('GET', P .. ':clock:' .. priority) or '0')
local latest = redis.call('ZRANGE', P .. ':rounds:' .. priority .. ':' .. owner, -1, -1, 'WITHSCORES')
local round = serving
if #latest > 0 then round = math.max(tonumber(latest[2]) + 1, serving) end
local job = {qkey = string.format('%d:%013d:%016d:%s', tonumber(priority), round, seq, rid), endpoint = endpoint,
             owner = owner, priority = priority, round = round, crashes = '0', start_deadline = ARGV[7]}
redis.call('HSET', jk(rid), 'endpoint', endpoint, 'owner', owner, 'priority', priority, 'round', round, 'seq', seq,
           'qkey', job.qkey, 'status', 'IN_QUEUE', 'created_at', ARGV[6], 'start_deadline', ARGV[7],
           'webhook_url', ARGV[8], 'destination', ARGV[9], 'attempts', '0', 'crashes', '0', 'running', '0',
           'cancel_requested', '0', 'lease_owner', '')
redis.call('SET', P .. ':payload:' .. rid, ARGV[11])
enqueue(rid, job)
redis.call('SADD', P .. ':endpoints', endpoint)
redis.call('ZADD', P .. ':history:' .. owner, ARGV[6], rid)
if ARGV[7] ~= '' then event('schedule') end
local position = redis.call('ZRANK', P .. ':q', job.qkey)
dispatch(ARGV[6])
return {position}
"""

# ARGV: prefix, worker, now, wait until ('' for not at all), settings (JSON, see `lease_next`). Takes
# what was leased to the worker while it waited, else leases; a worker given nothing waits (`next_jobs`).
# A worker that may wait has finished what it was given, so whatever is still leased to it then never
# reached it (a hand-off that a restart or a failover forgot, or whose reply was lost), or, rarely, ran
# without its result being stored: it goes back to the queue.
# Returns {id, JOB_FIELDS values, payload} per leased job.
CLAIM = r"""
local worker, now_text, settings = ARGV[2], ARGV[3], ARGV[5]
local ids = {}
local handed = redis.call('LPOP', P .. ':inbox:' .. worker)
if handed then  -- leased to this worker while it waited, and not taken then
  for _, row in ipairs(cjson.decode(handed)) do
    local rid = row[1]
    local status, owner = unpack(redis.call('HMGET', jk(rid), 'status', 'lease_owner'))
    if status == 'IN_PROGRESS' and owner == worker then table.insert(ids, rid) end
  end
else
  stop_waiting(worker)
  if ARGV[4] ~= '' then
    for _, rid in ipairs(leased_to(worker)) do give_back_untaken(rid, load(rid), worker, now_text) end
  end
  ids = lease_next(worker, now_text, cjson.decode(settings))
end
if #ids == 0 and ARGV[4] ~= '' then
  unrecorded(function()
    redis.call('ZADD', P .. ':idle', ARGV[4], worker)
    redis.call('HSET', P .. ':idle:settings', worker, settings)
  end)
elseif #ids > 0 then
  dispatch(now_text)  -- what is left, to the other waiting workers
end
return leased_rows(ids)
"""

# ARGV: prefix, worker, running (0/1), now, id... Marks the worker's leased ids; each start of
# running goes in the request's attempt log.
MARK_RUNNING = r"""
for i = 5, #ARGV do
  local status, owner, running = unpack(redis.call('HMGET', jk(ARGV[i]), 'status', 'lease_owner', 'running'))
  if status == 'IN_PROGRESS' and owner == ARGV[2] then
    redis.call('HSET', jk(ARGV[i]), 'running', ARGV[3])
    if ARGV[3] == '1' and running ~= '1' then
      redis.call('RPUSH', P .. ':attempts:' .. ARGV[i], cjson.encode({'running', ARGV[2], tonumber(ARGV[4])}))
    end
  end
end
return 0
"""

# ARGV: prefix, worker, lease expiry, id... Returns the ids whose cancellation was requested.
RENEW = r"""
local cancelled = {}
for i = 4, #ARGV do
  local rid = ARGV[i]
  local status, owner, cancel, endpoint, entry = unpack(redis.call(
    'HMGET', jk(rid), 'status', 'lease_owner', 'cancel_requested', 'endpoint', 'entry'))
  if status == 'IN_PROGRESS' and owner == ARGV[2] then
    redis.call('ZADD', P .. ':leases', 'XX', ARGV[3], rid)
    if entry and entry ~= '' then
      redis.call('XCLAIM', P .. ':stream:' .. endpoint, 'workers', ARGV[2], 0, entry, 'JUSTID')
    end
  end
  if cancel == '1' then table.insert(cancelled, rid) end
end
return cancelled
"""

# ARGV: prefix, now, worker. Returns the ids it had been handed and had not taken, requeued.
STOP_WAITING = r"""
local worker = ARGV[3]
stop_waiting(worker)
local requeued = {}
for _, handed in ipairs(redis.call('LRANGE', P .. ':inbox:' .. worker, 0, -1)) do
  for _, row in ipairs(cjson.decode(handed)) do
    local rid = row[1]
    local job = load(rid)
    if job and job.status == 'IN_PROGRESS' and job.lease_owner == worker then
      give_back_untaken(rid, job, worker, ARGV[2])
      table.insert(requeued, rid)
    end
  end
end
unrecorded(function() redis.call('DEL', P .. ':inbox:' .. worker) end)
return requeued
"""

# ARGV: prefix, now, worker ('' for any), id...
RELEASE = r"""
for i = 4, #ARGV do
  local rid = ARGV[i]
  local job = load(rid)
  if job and job.status == 'IN_PROGRESS' and (ARGV[3] == '' or job.lease_owner == ARGV[3]) then
    requeue(rid, job, ARGV[2], {'attempts', math.max(tonumber(job.attempts) - 1, 0)})
    add_log(rid, ARGV[2], 'WARN', 'Interrupted by a server shutdown; requeued')
  end
end
return 0
"""

# ARGV: prefix, id, now, only_if_queued_late (0/1), status_code, error, error_type, metrics, body, headers,
# then log lines (JSON) the request wrote before it finished, appended first
COMPLETE = r"""
local rid, now = ARGV[2], ARGV[3]
local job = load(rid)
if not job then return 0 end
if #ARGV > 10 then redis.call('RPUSH', P .. ':logs:' .. rid, unpack(ARGV, 11)) end
if job.status == 'COMPLETED' then
  if #ARGV > 10 then event('job', rid) end
  return 0
end
if ARGV[4] == '1' then  -- a start deadline: only a request still waiting, and late
  if job.status ~= 'IN_QUEUE' or job.start_deadline == '' or tonumber(job.start_deadline) >= tonumber(now) then
    return 0
  end
end
complete(rid, job, now, {ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]})
return 1
"""

# ARGV: prefix, id, now, status_code, error, error_type, metrics, body, headers
CANCEL = r"""
local rid = ARGV[2]
local job = load(rid)
if not job then return 'NOT_FOUND' end
if job.status == 'COMPLETED' then return 'ALREADY_COMPLETED' end
if job.status == 'IN_QUEUE' then
  complete(rid, job, ARGV[3], {ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]})
  return 'OK'
end
redis.call('HSET', jk(rid), 'cancel_requested', '1')
event('job', rid)
event('cancel', rid, ARGV[6])
return 'CANCELLATION_REQUESTED'
"""

# ARGV: prefix, id, now, max attempts, strike message, not-counted message, then the result of a
# cancelled request (6 values) and of one that has used up its attempts (6 values; `{crashes}` in
# its error and body is replaced by the count). Returns gone, requeued or failed.
EXPIRE = r"""
local rid, now, max_attempts = ARGV[2], ARGV[3], tonumber(ARGV[4])
local job = load(rid)
if not job or job.status ~= 'IN_PROGRESS' then return 'gone' end
local expiry = redis.call('ZSCORE', P .. ':leases', rid)
if expiry and tonumber(expiry) >= tonumber(now) then return 'gone' end  -- renewed in the meantime
if job.cancel_requested == '1' then
  complete(rid, job, now, {ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]})
  return 'failed'
end
local crashes = tonumber(job.crashes)
local message = ARGV[6]
if job.running == '1' then
  crashes = crashes + 1
  if crashes >= max_attempts then
    local function fill(text) return (string.gsub(text, '{crashes}', tostring(crashes))) end
    complete(rid, job, now, {ARGV[13], fill(ARGV[14]), ARGV[15], ARGV[16], fill(ARGV[17]), ARGV[18]})
    return 'failed'
  end
  message = string.gsub(ARGV[5], '{crashes}', tostring(crashes))
end
job.crashes = tostring(crashes)
requeue(rid, job, now, {'crashes', crashes})
add_log(rid, now, 'WARN', message)
return 'requeued'
"""

# ARGV: prefix, id. Returns the position or false.
POSITION = r"""
local qkey = redis.call('HGET', jk(ARGV[2]), 'qkey')
local status = redis.call('HGET', jk(ARGV[2]), 'status')
if not qkey or status ~= 'IN_QUEUE' then return false end
return redis.call('ZRANK', P .. ':q', qkey)
"""

# ARGV: prefix, id, now, next try
WEBHOOK_SENDING = r"""
local due = redis.call('ZSCORE', P .. ':webhooks:due', ARGV[2])
if not due or tonumber(due) > tonumber(ARGV[3]) then return 0 end
redis.call('HINCRBY', P .. ':webhook:' .. ARGV[2], 'attempts', 1)
redis.call('HSET', P .. ':webhook:' .. ARGV[2], 'next_attempt_at', ARGV[4])
redis.call('ZADD', P .. ':webhooks:due', ARGV[4], ARGV[2])
return 1
"""

# ARGV: prefix, id, now, delivered (0/1), next try ('' for none), error
WEBHOOK_ATTEMPTED = r"""
local key = P .. ':webhook:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 or redis.call('HEXISTS', key, 'delivered_at') == 1 then return 0 end
if ARGV[6] ~= NONE then redis.call('HSET', key, 'last_error', ARGV[6]) end
if ARGV[4] == '1' then
  redis.call('HSET', key, 'delivered_at', ARGV[3])
  redis.call('HDEL', key, 'next_attempt_at')
  redis.call('ZREM', P .. ':webhooks:due', ARGV[2])
elseif ARGV[5] ~= '' then
  redis.call('HSET', key, 'next_attempt_at', ARGV[5])
  redis.call('ZADD', P .. ':webhooks:due', ARGV[5], ARGV[2])
else
  redis.call('HDEL', key, 'next_attempt_at')
  redis.call('ZREM', P .. ':webhooks:due', ARGV[2])
end
return 1
"""

# ARGV: prefix, completed before, at most. Returns how many it deleted.
PURGE = r"""
local ids = redis.call('ZRANGEBYSCORE', P .. ':done', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, rid in ipairs(ids) do
  local owner = redis.call('HGET', jk(rid), 'owner')
  if owner then redis.call('ZREM', P .. ':history:' .. owner, rid) end
  redis.call('DEL', jk(rid), P .. ':payload:' .. rid, P .. ':result:' .. rid, P .. ':logs:' .. rid,
             P .. ':attempts:' .. rid, P .. ':webhook:' .. rid)
  redis.call('ZREM', P .. ':webhooks:due', rid)
  redis.call('ZREM', P .. ':done', rid)
end
return #ids
"""


def _arg(value: Any) -> str:
    return NONE if value is None else str(value)


def _float(value: bytes | str | None) -> float | None:
    return None if value in (None, b"", "") else float(value)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _result_args(result: JobResult) -> list[str]:
    return [
        str(result.status_code),
        _arg(result.error),
        _arg(result.error_type),
        json.dumps(dict(result.metrics)),
        json.dumps(result.body, separators=(",", ":")),
        json.dumps(dict(result.headers)),
    ]


class RedisJobStore(JobStore):
    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        *,
        lease_seconds: float,
        max_attempts: int,
        affinity_seconds: float = 10.0,
        prefix: str = "kiln",
        clock=time.time,
        listen: bool = True,
    ) -> None:
        self._redis = client = connect()
        self._prefix = prefix
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._affinity_seconds = affinity_seconds
        self._clock = clock
        self._closed = False
        self.changes = ChangeFeed()
        self._scripts = {
            name: client.register_script(PRELUDE + body)
            for name, body in {
                "submit": SUBMIT, "claim": CLAIM, "stop_waiting": STOP_WAITING, "mark_running": MARK_RUNNING, "renew": RENEW,
                "release": RELEASE, "complete": COMPLETE, "cancel": CANCEL, "expire": EXPIRE,
                "position": POSITION, "webhook_sending": WEBHOOK_SENDING,
                "webhook_attempted": WEBHOOK_ATTEMPTED, "purge": PURGE,
            }.items()
        }
        self._check_server()
        self._stopping = threading.Event()
        # Log lines are written behind the worker, in order, by one thread (`_write_logs`); a request's
        # last lines go with its completion, in the same script.
        self._log_lock = threading.Lock()
        self._pending_logs: dict[str, list[str]] = {}
        self._logs_waiting = threading.Event()
        self._log_writer = threading.Thread(target=self._write_logs, name="kiln-queue-logs", daemon=True)
        self._log_writer.start()
        self._listener = None
        if listen:
            # its own connection, which `close` cuts to end a blocked read at once
            self._events = connect()
            self._last_event = self._call(lambda: self._latest_event_id())
            self._listener = threading.Thread(target=self._listen, name="kiln-queue-events", daemon=True)
            self._listener.start()

    @classmethod
    def from_url(cls, url: str, **options) -> RedisJobStore:
        """`redis://[[user]:password@]HOST:PORT/DB[?prefix=NAME]` (or `rediss://`, `unix://`), or
        `redis+sentinel://[[user]:password@]HOST:PORT[,HOST:PORT...]/SERVICE/DB[?prefix=NAME]`: the
        primary that those Redis Sentinels call SERVICE, followed across failovers."""
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        prefix = query.pop("prefix", ["kiln"])[-1]
        plain = parts._replace(query=urllib.parse.urlencode(query, doseq=True))
        if parts.scheme == "redis+sentinel":
            return cls(sentinel_connector(plain), prefix=prefix, **options)
        return cls(lambda: redis.Redis.from_url(urllib.parse.urlunsplit(plain), **connection_options()), prefix=prefix, **options)

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def _check_server(self) -> None:
        version = self._call(lambda: self._redis.info("server"))["redis_version"]
        if tuple(int(part) for part in version.split(".")[:2]) < (6, 2):
            raise RuntimeError(f"Kiln needs Redis 6.2 or later; the server at --queue runs {version}")

    def _call(self, operation: Callable[[], Any]) -> Any:
        """Runs a Redis operation; a server that cannot be reached is QueueUnavailable (503)."""
        if self._closed:
            raise StoreClosed("the queue is closed")
        try:
            return operation()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            if self._closed:
                raise StoreClosed("the queue is closed") from None
            raise QueueUnavailable(f"The queue cannot be reached right now ({error}); try again shortly") from None
        except redis.BusyLoadingError:
            raise QueueUnavailable("The queue is loading its data after a restart; try again shortly") from None

    def _run(self, name: str, *args: Any) -> Any:
        return self._call(lambda: self._scripts[name](args=[self._prefix, *(str(arg) for arg in args)]))

    # -- submit and read -------------------------------------------------------------------

    def submit(self, job: NewJob, *, max_queue_length: int | None = None) -> int:
        payload = json.dumps(job.payload, separators=(",", ":"))
        outcome = self._run(
            "submit",
            job.request_id,
            job.endpoint,
            job.owner,
            int(job.priority),
            repr(self._clock()),
            "" if job.start_deadline is None else repr(job.start_deadline),
            job.webhook_url or "",
            webhook_destination(job.webhook_url) if job.webhook_url else "",
            "" if max_queue_length is None else max_queue_length,
            payload,
        )
        if outcome[0] == -1:
            raise QueueFull(
                f"The queue for {job.endpoint} already holds {outcome[1]} request(s), "
                f"the `fal_max_queue_length` of {max_queue_length} given"
            )
        self._changed(schedule=job.start_deadline is not None)
        return int(outcome[0])

    def _info(self, request_id: str, values: Sequence[bytes | None]) -> JobInfo | None:
        fields = dict(zip(INFO_FIELDS, values))
        if fields["status"] is None:
            return None
        return JobInfo(
            request_id=request_id,
            endpoint=fields["endpoint"].decode(),
            owner=fields["owner"].decode(),
            priority=Priority(int(fields["priority"])),
            status=JobStatus(fields["status"].decode()),
            created_at=float(fields["created_at"]),
            started_at=_float(fields["started_at"]),
            completed_at=_float(fields["completed_at"]),
            attempts=int(fields["attempts"]),
            cancel_requested=fields["cancel_requested"] == b"1",
            status_code=None if fields["result_status"] is None else int(fields["result_status"]),
            error=_text(fields["error"]),
            error_type=_text(fields["error_type"]),
            metrics=json.loads(fields["metrics"]) if fields["metrics"] else {},
        )

    def info(self, request_id: str) -> JobInfo | None:
        return self._info(request_id, self._call(lambda: self._redis.hmget(self._key("job", request_id), INFO_FIELDS)))

    def _job(
        self, request_id: str, values: Sequence[bytes | None], payload: bytes | None, body=None, headers=None
    ) -> Job | None:
        """A `Job` from the `JOB_FIELDS` of its hash, its payload and its result; None if it is gone."""
        info = self._info(request_id, values[:-1])
        if info is None:
            return None
        webhook_url = (values[-1] or b"").decode() or None
        return Job.stored(info, payload=payload, webhook_url=webhook_url, body=body, headers=headers)

    def get(self, request_id: str) -> Job | None:
        def read() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hmget(self._key("job", request_id), JOB_FIELDS)
            pipe.get(self._key("payload", request_id))
            pipe.hmget(self._key("result", request_id), ["body", "headers"])
            return pipe.execute()

        values, payload, (body, headers) = self._call(read)
        return self._job(request_id, values, payload, body, headers)

    def result(self, request_id: str) -> JobResult | None:
        def read() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hmget(self._key("job", request_id), INFO_FIELDS)
            pipe.hmget(self._key("result", request_id), ["body", "headers"])
            return pipe.execute()

        values, (body, headers) = self._call(read)
        info = self._info(request_id, values)
        if info is None or info.status is not JobStatus.COMPLETED:
            return None
        return stored_result(info, body, headers)

    def queue_position(self, request_id: str) -> int | None:
        position = self._run("position", request_id)
        return None if position is None else int(position)

    def logs(self, request_id: str, *, after_seq: int = 0) -> list[LogEntry]:
        self._flush_logs([request_id])
        lines = self._call(lambda: self._redis.lrange(self._key("logs", request_id), after_seq, -1))
        entries = []
        for offset, line in enumerate(lines, start=after_seq + 1):
            timestamp, level, message = json.loads(line)
            entries.append(LogEntry(offset, timestamp, level, message))
        return entries

    def append_logs(self, request_id: str, entries: Iterable[tuple[str, str]]) -> None:
        """Queues the lines for the log writer and returns: a worker does not wait a round trip (and an
        fsync) per line. This node's `logs` reads them at once; other nodes up to
        `LOG_WRITE_DELAY_SECONDS` later."""
        now = self._clock()
        lines = [json.dumps([now, level, message]) for level, message in entries]
        if not lines:
            return
        with self._log_lock:
            self._pending_logs.setdefault(request_id, []).extend(lines)
        self._logs_waiting.set()

    def _take_logs(self, request_ids: Iterable[str] | None) -> dict[str, list[str]]:
        """Removes and returns the pending lines (of `request_ids`, or all); the caller holds `_log_lock`."""
        if request_ids is None:
            taken, self._pending_logs = self._pending_logs, {}
            return taken
        return {rid: self._pending_logs.pop(rid) for rid in request_ids if rid in self._pending_logs}

    def _put_back_logs(self, taken: Mapping[str, list[str]]) -> None:
        """Returns lines that could not be written ahead of any queued since; the caller holds `_log_lock`."""
        for request_id, lines in taken.items():
            if lines:
                self._pending_logs[request_id] = lines + self._pending_logs.get(request_id, [])

    def _flush_logs(self, request_ids: Iterable[str] | None = None) -> None:
        """Writes the pending lines now. Holding `_log_lock` through the write keeps each request's lines
        in order, whoever writes them."""
        with self._log_lock:
            taken = self._take_logs(request_ids)
            if not taken:
                return

            def append() -> None:
                pipe = self._redis.pipeline(transaction=True)
                for request_id, lines in taken.items():
                    pipe.rpush(self._key("logs", request_id), *lines)
                    event = {"t": "job", "id": request_id, "x": ""}
                    pipe.xadd(self._key("events"), event, maxlen=EVENTS_KEPT, approximate=True)
                pipe.execute()

            try:
                self._call(append)
            except Exception:
                self._put_back_logs(taken)
                raise
        for request_id in taken:
            self._changed(request_id)

    def _write_logs(self) -> None:
        while not self._stopping.is_set():
            self._logs_waiting.wait()
            self._stopping.wait(LOG_WRITE_DELAY_SECONDS)
            self._logs_waiting.clear()
            try:
                self._flush_logs()
            except StoreClosed:
                return
            except Exception as error:
                logger.warning("could not write log lines to the queue (%s); retrying", error)
                self._logs_waiting.set()
                self._stopping.wait(0.5)

    # -- workers ---------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        batch_limits: Mapping[str, int],
        *,
        default_batch: int = 1,
        warm: Collection[str] = (),
    ) -> list[Job]:
        return self._claim(worker_id, batch_limits, default_batch, warm, wait_until="")

    def next_jobs(
        self,
        worker_id: str,
        batch_limits: Mapping[str, int],
        *,
        default_batch: int = 1,
        warm: Collection[str] = (),
        timeout: float,
    ) -> list[Job]:
        """Claims; given nothing, the worker waits in `P:idle` and blocks on its inbox, where the change
        that makes a request claimable (a submit, a requeue, a completion) leases it to the worker in
        the same step: no round trip (and no fsync) between a submit and its claim."""
        wait_until = repr(self._clock() + timeout + WAIT_MARGIN_SECONDS)
        jobs = self._claim(worker_id, batch_limits, default_batch, warm, wait_until=wait_until)
        if jobs:
            return jobs
        handed = self._call(lambda: self._redis.blpop([self._key("inbox", worker_id)], timeout=timeout))
        if handed is None:
            return []
        # the rows as JSON: strings, and false for a field the job's hash lacks
        rows = [
            [request_id.encode(), [None if value is False else value.encode() for value in values], payload.encode()]
            for request_id, values, payload in json.loads(handed[1])
        ]
        return self._jobs(rows)

    def _claim(
        self, worker_id: str, batch_limits: Mapping[str, int], default_batch: int, warm: Collection[str], *, wait_until: str
    ) -> list[Job]:
        settings = {
            "batch": default_batch,
            "lease": self._lease_seconds,
            "affinity": self._affinity_seconds,
            "limits": dict(batch_limits),
            "warm": {endpoint: True for endpoint in warm},
        }
        return self._jobs(self._run("claim", worker_id, repr(self._clock()), wait_until, json.dumps(settings)))

    def _jobs(self, rows: Sequence[Sequence[Any]]) -> list[Job]:
        """Jobs from the scripts' `leased_rows`."""
        jobs = []
        for request_id, values, payload in rows:
            request_id = request_id.decode()
            self._changed(request_id)
            jobs.append(self._job(request_id, values, payload))
        return jobs

    def stop_waiting(self, worker_id: str) -> None:
        requeued = self._run("stop_waiting", repr(self._clock()), worker_id)
        for request_id in requeued:
            self._changed(request_id.decode())

    def mark_running(self, worker_id: str, request_ids: Sequence[str], *, running: bool = True) -> None:
        if request_ids:
            self._run("mark_running", worker_id, int(running), repr(self._clock()), *request_ids)

    def renew(self, worker_id: str, request_ids: Sequence[str]) -> set[str]:
        if not request_ids:
            return set()
        expiry = repr(self._clock() + self._lease_seconds)
        return {request_id.decode() for request_id in self._run("renew", worker_id, expiry, *request_ids)}

    def release(self, request_ids: Sequence[str], *, worker_id: str | None = None) -> None:
        if request_ids:
            self._flush_logs(request_ids)  # before the line saying it was requeued
            self._run("release", repr(self._clock()), worker_id or "", *request_ids)
            for request_id in request_ids:
                self._changed(request_id)

    def complete(self, request_id: str, result: JobResult) -> bool:
        with self._log_lock:
            lines = self._take_logs([request_id]).get(request_id, [])
            try:
                done = self._run("complete", request_id, repr(self._clock()), 0, *_result_args(result), *lines) == 1
            except Exception:
                self._put_back_logs({request_id: lines})
                raise
        if done or lines:
            self._changed(request_id)
        return done

    def cancel(self, request_id: str, result: JobResult) -> CancelOutcome:
        outcome = self._run("cancel", request_id, repr(self._clock()), *_result_args(result))
        self._changed(request_id)
        return CancelOutcome(outcome.decode())

    def recover(self) -> list[str]:
        now = self._clock()
        expired = self._call(lambda: self._redis.zrangebyscore(self._key("leases"), "-inf", f"({now!r}"))
        cancelled = _result_args(JobResult.from_error(Cancelled()))
        crashed = _result_args(
            JobResult.from_error(
                KilnError(
                    "Kiln's worker died {crashes} time(s) while running this request (last: its worker stopped "
                    "renewing its lease), with nothing else running after the first, so the request is the "
                    "likely cause; it will not be retried",
                    error_type="runner_server_error",
                )
            )
        )
        completed = []
        for request_id in (raw.decode() for raw in expired):
            outcome = self._run(
                "expire",
                request_id,
                repr(now),
                self._max_attempts,
                "Requeued: its worker stopped renewing its lease while it was running (strike {crashes} of "
                f"{self._max_attempts}); it runs alone next, so a repeat can be told apart from bad luck",
                "Requeued: its worker stopped renewing its lease before it started running (not counted against it)",
                *cancelled,
                *crashed,
            )
            if outcome == b"failed":
                completed.append(request_id)
            self._changed(request_id)
        late = self._call(lambda: self._redis.zrangebyscore(self._key("deadlines"), "-inf", f"({now!r}"))
        timeout = _result_args(
            JobResult.from_error(
                StartTimeout(
                    "The request did not start before the deadline its `X-Fal-Request-Start-Timeout` "
                    "(or `X-Fal-Request-Timeout`) header set"
                )
            )
        )
        for request_id in (raw.decode() for raw in late):
            if self._run("complete", request_id, repr(now), 1, *timeout) == 1:
                completed.append(request_id)
                self._changed(request_id)
        return completed

    def next_start_deadline(self) -> float | None:
        first = self._call(lambda: self._redis.zrange(self._key("deadlines"), 0, 0, withscores=True))
        return first[0][1] if first else None

    # -- webhooks and retention ------------------------------------------------------------

    def webhooks_due(
        self, limit: int, *, skip_destinations: Collection[str] = (), skip_owners: Collection[str] = ()
    ) -> list[WebhookDelivery]:
        now = self._clock()
        skip_destinations, skip_owners = set(skip_destinations), set(skip_owners)
        found: list[WebhookDelivery] = []
        offset, chunk = 0, max(16, 2 * limit)
        while len(found) < limit:
            ids = self._call(
                lambda: self._redis.zrangebyscore(self._key("webhooks:due"), "-inf", repr(now), start=offset, num=chunk)
            )
            if not ids:
                break

            def read() -> list[Any]:
                pipe = self._redis.pipeline(transaction=False)
                for raw in ids:
                    pipe.hmget(self._key("webhook", raw.decode()), ["url", "attempts", "owner", "destination"])
                return pipe.execute()

            for raw, (url, attempts, owner, destination) in zip(ids, self._call(read)):
                if url is None:
                    continue
                delivery = WebhookDelivery(
                    raw.decode(), url.decode(), int(attempts), (owner or b"").decode(), (destination or b"").decode()
                )
                if delivery.destination in skip_destinations or delivery.owner in skip_owners:
                    continue
                found.append(delivery)
                if len(found) == limit:
                    break
            offset += len(ids)
        return found

    def webhook_sending(self, request_id: str, *, retry_in: float) -> bool:
        now = self._clock()
        return self._run("webhook_sending", request_id, repr(now), repr(now + retry_in)) == 1

    def webhook_attempted(self, request_id: str, *, delivered: bool, retry_in: float | None, error: str | None) -> None:
        now = self._clock()
        next_try = "" if delivered or retry_in is None else repr(now + retry_in)
        self._run("webhook_attempted", request_id, repr(now), int(delivered), next_try, _arg(error))

    def purge(self, older_than: float) -> int:
        self._flush_logs()  # a line written after its request was purged would outlive it
        total = 0
        while True:
            deleted = int(self._run("purge", repr(older_than), 500))
            total += deleted
            if deleted < 500:
                return total

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._flush_logs()
        except Exception as error:
            logger.warning("log lines not written before closing the queue: %s", error)
        self._closed = True
        self._stopping.set()
        self._logs_waiting.set()
        self._log_writer.join(5)
        if self._listener is not None:
            self._events.connection_pool.disconnect()
            self._listener.join(5)
            self._events.close()
        self._redis.close()

    # -- the web pages ---------------------------------------------------------------------

    def owner_history(
        self,
        owner: str,
        *,
        endpoint: str | None = None,
        status: JobStatus | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[JobInfo]:
        found: list[tuple[float, int, JobInfo]] = []
        newest = "+inf" if before is None else f"({before!r}"
        offset, chunk = 0, max(16, 2 * limit)
        while len(found) < limit:
            ids = self._call(
                lambda: self._redis.zrevrangebyscore(self._key("history", owner), newest, "-inf", start=offset, num=chunk)
            )
            if not ids:
                break

            def read() -> list[Any]:
                pipe = self._redis.pipeline(transaction=False)
                for raw in ids:
                    pipe.hmget(self._key("job", raw.decode()), [*INFO_FIELDS, "seq"])
                return pipe.execute()

            for raw, values in zip(ids, self._call(read)):
                info = self._info(raw.decode(), values[:-1])
                if info is None or (endpoint is not None and info.endpoint != endpoint):
                    continue
                if status is not None and info.status is not status:
                    continue
                found.append((info.created_at, int(values[-1]), info))
            offset += len(ids)
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [info for _, _, info in found[: max(0, limit)]]

    def queue_depths(self) -> dict[str, dict[str, int]]:
        endpoints = sorted(raw.decode() for raw in self._call(lambda: self._redis.smembers(self._key("endpoints"))))

        def read() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for endpoint in endpoints:
                pipe.zcard(self._key("q", "ep", endpoint))
                pipe.xpending(self._key("stream", endpoint), "workers")
            return pipe.execute(raise_on_error=False)

        replies = self._call(read)
        depths: dict[str, dict[str, int]] = {}
        for index, endpoint in enumerate(endpoints):
            waiting, pending = replies[2 * index : 2 * index + 2]
            running = pending["pending"] if isinstance(pending, dict) else 0  # no group yet: nothing ran
            counts = {JobStatus.IN_QUEUE.value: waiting, JobStatus.IN_PROGRESS.value: running}
            counts = {state: count for state, count in counts.items() if count}
            if counts:
                depths[endpoint] = counts
        return depths

    # -- nodes and secrets -----------------------------------------------------------------

    def heartbeat_node(self, node_id: str, record: Mapping[str, Any]) -> None:
        now = self._clock()

        def beat() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(self._key("nodes"), node_id, json.dumps(dict(record)))
            pipe.zadd(self._key("nodes:beat"), {node_id: now})
            pipe.execute()
            gone = self._redis.zrangebyscore(self._key("nodes:beat"), "-inf", now - NODE_FORGET_SECONDS)
            if gone:
                self._redis.hdel(self._key("nodes"), *gone)
                self._redis.zrem(self._key("nodes:beat"), *gone)

        self._call(beat)

    def forget_node(self, node_id: str) -> None:
        def forget() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hdel(self._key("nodes"), node_id)
            pipe.zrem(self._key("nodes:beat"), node_id)
            pipe.execute()

        self._call(forget)

    def nodes(self) -> dict[str, dict[str, Any]]:
        alive = self._call(
            lambda: self._redis.zrangebyscore(
                self._key("nodes:beat"), self._clock() - NODE_TIMEOUT_SECONDS, "+inf", withscores=True
            )
        )
        if not alive:
            return {}
        records = self._call(lambda: self._redis.hmget(self._key("nodes"), [node for node, _ in alive]))
        return {
            node.decode(): {**json.loads(record), "last_seen": seen}
            for (node, seen), record in zip(alive, records)
            if record is not None
        }

    def shared_secret(self, name: str, create: Callable[[], bytes]) -> bytes:
        key = self._key("secret", name)
        value = self._call(lambda: self._redis.get(key))
        if value is None:
            self._call(lambda: self._redis.set(key, create(), nx=True))  # the first node's wins
            value = self._call(lambda: self._redis.get(key))
        return value

    # -- hearing of the other nodes' changes -----------------------------------------------

    def _changed(self, *request_ids: str, schedule: bool = False) -> None:
        """Wakes this node's waiters for a change it made itself, where no listener will. A listening
        store hears its own changes on the event stream like every other node's: once, and as soon
        as Redis has them, which on a busy node is sooner than the reply reaches the caller."""
        if self._listener is not None:
            return
        for request_id in request_ids:
            self.changes.publish(request_id)
        if schedule:
            self.changes.schedule_changed.set()

    def _latest_event_id(self) -> str:
        last = self._redis.xrevrange(self._key("events"), count=1)
        return last[0][0].decode() if last else "0-0"

    def _listen(self) -> None:
        """Feeds the changes every node makes into this node's ChangeFeed, until `close`."""
        lost = False
        while not self._stopping.is_set():
            try:
                if lost:
                    # events may have been missed (or Redis restarted): every waiter re-reads once
                    self.changes.publish_everything()
                    lost = False
                replies = self._events.xread({self._key("events"): self._last_event}, count=1000, block=1000)
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as error:
                if self._stopping.is_set():
                    return
                logger.warning("lost the queue's event stream (%s); reconnecting", error)
                lost = True
                self._stopping.wait(0.5)
                continue
            except Exception:
                if self._stopping.is_set():
                    return
                logger.exception("reading the queue's event stream failed; retrying")
                lost = True
                self._stopping.wait(0.5)
                continue
            for _, events in replies:
                for event_id, fields in events:
                    self._last_event = event_id.decode()
                    self._deliver(fields)

    def _deliver(self, fields: Mapping[bytes, bytes]) -> None:
        kind = fields.get(b"t", b"").decode()
        request_id = fields.get(b"id", b"").decode()
        if kind == "job":
            self.changes.publish(request_id)
        elif kind == "schedule":
            self.changes.schedule_changed.set()
        elif kind == "cancel":
            self.changes.publish_cancel(request_id, fields.get(b"x", b"").decode())


def connection_options() -> dict[str, Any]:
    """Timeouts, and retries that ride out a dropped connection or a failover of a few seconds."""
    return {
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 4),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }


def sentinel_connector(url: urllib.parse.SplitResult) -> Callable[[], redis.Redis]:
    """Connections to the primary the Sentinels at `url` name; each asks them again after a failover."""
    credentials, _, hosts = url.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "26379")
        sentinels.append((name, int(port)))
    service, _, db = url.path.strip("/").partition("/")
    if not service:
        raise ValueError(f"--queue {urllib.parse.urlunsplit(url)!r}: name the Sentinels' service: redis+sentinel://HOST:26379/SERVICE/DB")
    auth = {"username": urllib.parse.unquote(username) or None, "password": urllib.parse.unquote(password) or None}

    def connect() -> redis.Redis:
        options = connection_options()
        watchers = Sentinel(sentinels, socket_timeout=options["socket_timeout"], socket_connect_timeout=options["socket_connect_timeout"])
        return watchers.master_for(service, redis_class=redis.Redis, db=int(db or 0), **auth, **options)

    return connect
