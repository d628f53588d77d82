-- Argo CD health check for LMForge's five kinds (Dataset, PretrainJob, AlignmentJob, EvalSuite,
-- ModelRelease): add it to argocd-cm as resource.customizations.health.lmforge.io_<Kind>
-- (docs/operator.md). It reads only the Ready condition, whose reasons are documented in
-- lmforge/api/meta.py:
--   Ready=True                                              -> Healthy (done, or serving)
--   Ready=False: StageFailed, InputFailed, InvalidSpec, GateFailed -> Degraded (needs a change)
--   Ready=Unknown: StoreUnavailable                         -> Degraded (needs the store fixed)
--   anything else (Pending, Running, Retrying, Waiting*, Deploying, no status yet, or a status
--   older than the spec)                                    -> Progressing
local hs = {status = "Progressing", message = "waiting for the LMForge operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "the operator has not yet acted on generation " .. generation
  return hs
end
local degraded = {StageFailed = true, InputFailed = true, InvalidSpec = true, GateFailed = true,
                  StoreUnavailable = true}
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    hs.message = (c.reason or "") .. ": " .. (c.message or "")
    if c.status == "True" then
      hs.status = "Healthy"
    elseif degraded[c.reason] then
      hs.status = "Degraded"
    end
    return hs
  end
end
return hs
