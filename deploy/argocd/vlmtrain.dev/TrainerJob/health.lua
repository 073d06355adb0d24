-- Argo CD health of a vlmtrain.dev TrainerJob, from status.conditions (set by the operator).
--   Degraded     Failed=True (the message names the reason: DataInvalid, TrainerFailed, ...)
--   Healthy      Succeeded=True
--   Suspended    Suspended=True (spec.suspend)
--   Progressing  everything else: no status yet, a spec change not yet seen by the operator,
--                waiting for a shape or for Kueue, pods pending, training
local function find(conditions, type)
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to admit the job"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local conditions = obj.status.conditions

local failed = find(conditions, "Failed")
if failed ~= nil and failed.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(failed)
  return hs
end
local succeeded = find(conditions, "Succeeded")
if succeeded ~= nil and succeeded.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(succeeded)
  return hs
end
local suspended = find(conditions, "Suspended")
if suspended ~= nil and suspended.status == "True" then
  hs.status = "Suspended"
  hs.message = describe(suspended)
  return hs
end
local admitted = find(conditions, "Admitted")
if admitted ~= nil and admitted.status ~= "True" then
  hs.status = "Progressing"
  hs.message = describe(admitted)
  return hs
end
local running = find(conditions, "Running")
hs.status = "Progressing"
if running ~= nil then
  hs.message = describe(running)
else
  hs.message = "Waiting for the trainer to start"
end
return hs
