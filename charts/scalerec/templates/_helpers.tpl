{{/*
Shared helpers. Every object name, selector and scaleTargetRef comes from here,
so an HPA can never point at a name or kind the chart did not render (the bug
gorse's chart shipped).
*/}}

{{- define "scalerec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "scalerec.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "scalerec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of a component's objects: (list $root "ranker") -> <fullname>-ranker */}}
{{- define "scalerec.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "scalerec.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The workload behind a component, as an autoscaling/v2 CrossVersionObjectReference.
The Deployment template and every HPA/ScaledObject use this one helper.
(list $root "ranker")
*/}}
{{- define "scalerec.workloadRef" -}}
apiVersion: apps/v1
kind: Deployment
name: {{ include "scalerec.componentName" . }}
{{- end -}}

{{- define "scalerec.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "scalerec.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "scalerec.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "scalerec.chart" $root }}
{{ include "scalerec.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: scalerec
{{- end -}}

{{/*
Deep merge of `src` into `dst` (both dicts; mutates dst). Unlike sprig's
merge/mergeOverwrite (mergo), an explicit false, 0 or "" in the component wins
over the default, and null removes the key (so `httpGet: null` swaps a probe
handler). Lists are replaced, not appended.
*/}}
{{- define "scalerec.mergeInto" -}}
{{- $dst := index . 0 -}}
{{- range $k, $v := index . 1 -}}
{{- if kindIs "invalid" $v -}}
{{- $_ := unset $dst $k -}}
{{- else if and (kindIs "map" $v) (kindIs "map" (get $dst $k)) -}}
{{- include "scalerec.mergeInto" (list (get $dst $k) $v) -}}
{{- else if kindIs "map" $v -}}
{{- $_ := set $dst $k (deepCopy $v) -}}
{{- else -}}
{{- $_ := set $dst $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A component's effective config as YAML: deepCopy(default) <- components[name],
plus `name`. Use: $c := include "scalerec.component" (list $ "ranker") | fromYaml
*/}}
{{- define "scalerec.component" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $c := deepCopy $root.Values.default -}}
{{- include "scalerec.mergeInto" (list $c (get $root.Values.components $name)) -}}
{{- $_ := set $c "name" $name -}}
{{- toYaml $c -}}
{{- end -}}

{{/* image reference: (list $root $c) */}}
{{- define "scalerec.image" -}}
{{- $root := index . 0 -}}
{{- $img := (index . 1).image -}}
{{- $tag := default $root.Chart.AppVersion ($img.tag | toString) -}}
{{- if $img.registry -}}
{{- printf "%s/%s:%s" $img.registry $img.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The API-keys Secret's data as the cluster will hold it (base64 values, by key): rendered from
apiKeys.keys when the chart owns the Secret, read back with `lookup` when it is an existingSecret
(empty under `helm template` and before the Secret exists). Both the owned Secret and the pods'
checksum come from here, so the checksum is over the Secret's data, never over values.
*/}}
{{- define "scalerec.apiKeysData" -}}
{{- if .Values.apiKeys.existingSecret -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace .Values.apiKeys.existingSecret -}}
{{- if $found -}}{{- toJson (default dict $found.data) -}}{{- end -}}
{{- else if .Values.apiKeys.keys -}}
{{- toJson (dict .Values.apiKeys.secretKey (join "," .Values.apiKeys.keys | b64enc)) -}}
{{- end -}}
{{- end -}}

{{- define "scalerec.apiKeysSecretName" -}}
{{- if .Values.apiKeys.existingSecret -}}
{{- .Values.apiKeys.existingSecret -}}
{{- else if .Values.apiKeys.keys -}}
{{- include "scalerec.componentName" (list . "api-keys") -}}
{{- end -}}
{{- end -}}

{{/*
LOG_ID_KEY's Secret data as the cluster will hold it ({secretKey: base64}): an existingSecret read
with `lookup` (empty under `helm template`); else the chart's own Secret as the cluster already holds
it, so the key made at install survives upgrades; else a new random key. Made once per render
(kept in .Values.logIdKey), so the Secret and the pods' checksum agree.
*/}}
{{- define "scalerec.logIdKeyData" -}}
{{- $v := .Values.logIdKey -}}
{{- if not (hasKey $v "_data") -}}
{{- $data := "" -}}
{{- $name := include "scalerec.logIdKeySecretName" . -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- if $v.existingSecret -}}
{{- if $found -}}{{- $data = toJson (default dict $found.data) -}}{{- end -}}
{{- else if and $found (hasKey (default dict $found.data) $v.secretKey) -}}
{{- $data = toJson (dict $v.secretKey (index $found.data $v.secretKey)) -}}
{{- else -}}
{{- $data = toJson (dict $v.secretKey (randAlphaNum 48 | b64enc)) -}}
{{- end -}}
{{- $_ := set $v "_data" $data -}}
{{- end -}}
{{- $v._data -}}
{{- end -}}

{{- define "scalerec.logIdKeySecretName" -}}
{{- .Values.logIdKey.existingSecret | default (include "scalerec.componentName" (list . "log-id-key")) -}}
{{- end -}}

{{/* Is the model repository an object-storage mirror (vs a shared PVC)? */}}
{{- define "scalerec.modelRepoIsObjectStorage" -}}
{{- if eq .Values.modelRepository.type "objectStorage" -}}true{{- end -}}
{{- end -}}

{{/*
The ConfigMap the trainer takes model version numbers from when every pod has its own copy of the
repository (object storage: scalerec_models.version_counter); empty otherwise. (list $root $c)
*/}}
{{- define "scalerec.modelVersionCounter" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- if and (eq $c.name "trainer") (include "scalerec.modelRepoIsObjectStorage" $root) -}}
{{- include "scalerec.componentName" (list $root "trainer") }}-model-versions
{{- end -}}
{{- end -}}

{{/* Where an in-cluster client looks for its token, CA and namespace. */}}
{{- define "scalerec.apiTokenDir" -}}/var/run/secrets/kubernetes.io/serviceaccount{{- end -}}

{{- define "scalerec.modelRepoClaim" -}}
{{- default (include "scalerec.componentName" (list . "models")) .Values.modelRepository.pvc.existingClaim -}}
{{- end -}}

{{- define "scalerec.dataClaim" -}}
{{- default (include "scalerec.componentName" (list . "data")) .Values.persistence.data.existingClaim -}}
{{- end -}}

{{/*
A service's DEPLOYMENT and CONSUMER_GROUP as its settings will read them (env, tpl'd), with
the settings' defaults; topic and consumer-group names are derived from them exactly as
scalerec_events.topics.topic_name and ServiceSettings.group do (tests/charts compares the two).
(list $root $c)
*/}}
{{- define "scalerec.deployment" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- tpl (toString (default "scalerec" (get (default dict $c.env) "DEPLOYMENT"))) $root -}}
{{- end -}}

{{/* <DEPLOYMENT>.<topic suffix>: (list $root $c "events.raw.v1") */}}
{{- define "scalerec.topic" -}}
{{- printf "%s.%s" (include "scalerec.deployment" (list (index . 0) (index . 1))) (index . 2) -}}
{{- end -}}

{{/* <DEPLOYMENT>.<CONSUMER_GROUP>.<stream>: (list $root $c "events") */}}
{{- define "scalerec.consumerGroup" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $group := tpl (toString (default $c.name (get (default dict $c.env) "CONSUMER_GROUP"))) $root -}}
{{- printf "%s.%s.%s" (include "scalerec.deployment" (list $root $c)) $group (index . 2) -}}
{{- end -}}

{{/*
Memcached nodes, comma-separated: memcached.servers, then one address per pod of
memcached.statefulSet (<name>-<i>.<headless service>:<port>), so that the client's
consistent hashing sees every node.
*/}}
{{- define "scalerec.memcachedServers" -}}
{{- $root := . -}}
{{- $servers := list -}}
{{- range $root.Values.memcached.servers -}}
{{- $servers = append $servers (tpl (toString .) $root) -}}
{{- end -}}
{{- $sts := $root.Values.memcached.statefulSet -}}
{{- if and $sts.name (gt (int $sts.replicas) 0) -}}
{{- $name := tpl (toString $sts.name) $root -}}
{{- $service := default $name (tpl (toString $sts.service) $root) -}}
{{- range $i := until (int $sts.replicas) -}}
{{- $servers = append $servers (printf "%s-%d.%s:%v" $name $i $service $sts.port) -}}
{{- end -}}
{{- end -}}
{{- join "," $servers -}}
{{- end -}}

{{/*
Triton's gRPC address for the ranker's SCORER_URL ("ready") and the evaluator's TRITON_URL ("pods"):
a headless Service of each, whose name resolves to every pod's address. Through the ClusterIP one
gRPC connection reaches one pod: the evaluator would load versions on one replica and every ranker
worker would send all its requests to one. (list $root "ready"|"pods")
*/}}
{{- define "scalerec.tritonGrpcUrl" -}}
{{- $root := index . 0 -}}
{{- printf "triton://%s:%v" (include "scalerec.tritonHeadlessName" .) $root.Values.components.triton.ports.grpc -}}
{{- end -}}

{{/* Name of one of Triton's headless Services, within a Service name's 63 characters. (list $root "ready"|"pods") */}}
{{- define "scalerec.tritonHeadlessName" -}}
{{- $set := index . 1 -}}
{{- $base := include "scalerec.componentName" (list (index . 0) "triton") | trunc (int (sub 62 (len $set))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base $set -}}
{{- end -}}

{{/* Where kafka.tls.existingSecret is mounted (read-only) in every pod that talks to Kafka. */}}
{{- define "scalerec.kafkaTlsDir" -}}/etc/scalerec/kafka-tls{{- end -}}

{{/*
"true" when the pods talk to Kafka (kafka.bootstrap, tpl'd: where BUS_URL is rendered) over SASL
(kafka.securityProtocol SASL_PLAINTEXT or SASL_SSL): KAFKA_SASL_* then come with BUS_URL.
*/}}
{{- define "scalerec.kafkaSasl" -}}
{{- if and (tpl (toString .Values.kafka.bootstrap) .) (hasPrefix "SASL_" .Values.kafka.securityProtocol) -}}true{{- end -}}
{{- end -}}

{{/*
"true" when a component's pods mount kafka.tls.existingSecret: ScaleRec services (not Triton, which
gets no BUS_URL) when the pods talk to Kafka and a TLS Secret is named. (list $root $c)
*/}}
{{- define "scalerec.kafkaTlsMounted" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- if and (ne $c.name "triton") (tpl (toString $root.Values.kafka.bootstrap) $root) $root.Values.kafka.tls.existingSecret -}}true{{- end -}}
{{- end -}}

{{/*
Env every scalerec service gets from structured values (backends, ports, dirs),
as a dict rendered to YAML. default.env and the component's env override it.
(list $root $c)
*/}}
{{- define "scalerec.generatedEnv" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $env := dict "HOST" "0.0.0.0" "PORT" (toString $c.port) "DATA_DIR" $root.Values.persistence.data.mountPath -}}
{{- $_ := set $env "BUS_RETENTION_HOURS" (toString $root.Values.kafka.retentionHours) -}}
{{- with tpl (toString $root.Values.kafka.bootstrap) $root -}}
{{- $k := $root.Values.kafka -}}
{{- $_ := set $env "BUS_URL" (printf "kafka://%s?replication_factor=%v&min_insync_replicas=%v&compression_type=%s" . (int $k.replicationFactor) (int $k.minInsyncReplicas) $k.compression) -}}
{{- /* Security travels with BUS_URL; the SASL credentials are secretKeyRefs (scalerec.env). */ -}}
{{- $_ := set $env "KAFKA_SECURITY_PROTOCOL" $k.securityProtocol -}}
{{- if hasPrefix "SASL_" $k.securityProtocol -}}
{{- $_ := set $env "KAFKA_SASL_MECHANISM" $k.sasl.mechanism -}}
{{- end -}}
{{- if $k.tls.existingSecret -}}
{{- $dir := include "scalerec.kafkaTlsDir" $root -}}
{{- if $k.tls.caKey -}}
{{- $_ := set $env "KAFKA_SSL_CAFILE" (printf "%s/%s" $dir $k.tls.caKey) -}}
{{- end -}}
{{- if $k.tls.certKey -}}
{{- $_ := set $env "KAFKA_SSL_CERTFILE" (printf "%s/%s" $dir $k.tls.certKey) -}}
{{- $_ := set $env "KAFKA_SSL_KEYFILE" (printf "%s/%s" $dir $k.tls.keyKey) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with tpl (toString $root.Values.hbase.thrift) $root -}}
{{- $url := printf "hbase://%s?pool=%v" . $root.Values.hbase.pool -}}
{{- if eq $c.name "ranker" -}}
{{- $url = printf "%s&timeout_ms=%v" $url (int $root.Values.hbase.rankerTimeoutMs) -}}
{{- end -}}
{{- $_ := set $env "STORE_URL" $url -}}
{{- end -}}
{{- with include "scalerec.memcachedServers" $root -}}
{{- $_ := set $env "CACHE_URL" (printf "memcached://%s" .) -}}
{{- end -}}
{{- if $c.modelRepositoryAccess -}}
{{- $_ := set $env "MODEL_REPOSITORY" $root.Values.modelRepository.mountPath -}}
{{- end -}}
{{- with include "scalerec.modelVersionCounter" . -}}
{{- $_ := set $env "MODEL_VERSION_COUNTER" (printf "kubernetes:configmap/%s" .) -}}
{{- end -}}
{{- if and (eq $c.name "ranker") $root.Values.components.triton.enabled -}}
{{- $_ := set $env "SCORER_URL" (include "scalerec.tritonGrpcUrl" (list $root "ready")) -}}
{{- end -}}
{{- /* The evaluator is Triton's one model controller (rankers only follow what it loads). */ -}}
{{- if and (eq $c.name "evaluator") $root.Values.components.triton.enabled -}}
{{- $_ := set $env "TRITON_URL" (include "scalerec.tritonGrpcUrl" (list $root "pods")) -}}
{{- end -}}
{{- /* The ranker runs one worker process per CPU it requests (without a CPU limit there is no
     cgroup quota, and WORKERS=0 would start one worker, each with its model, per CPU of the node). */ -}}
{{- if eq $c.name "ranker" -}}
{{- $cpu := toString (dig "requests" "cpu" "1" (default dict $c.resources)) -}}
{{- $cores := hasSuffix "m" $cpu | ternary (divf (trimSuffix "m" $cpu | float64) 1000) (float64 $cpu) -}}
{{- $_ := set $env "WORKERS" (toString (max 1 (int (ceil $cores)))) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
The `env:` list of a scalerec service container: generated <- default.env <- component env,
every value tpl'd, sorted by name; then API_KEYS, LOG_ID_KEY, (SASL) KAFKA_SASL_PASSWORD and
KAFKA_SASL_USERNAME and (an encrypted client key) KAFKA_SSL_KEY_PASSWORD from their Secrets, each unless
env (or, for the Kafka ones, extraEnv) sets it; then extraEnv. (list $root $c)
*/}}
{{- define "scalerec.env" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $env := include "scalerec.generatedEnv" . | fromYaml -}}
{{- range $k, $v := $c.env -}}
{{- $_ := set $env $k $v -}}
{{- end -}}
{{- $secret := include "scalerec.apiKeysSecretName" $root -}}
{{- $withKeys := and $secret (has $c.name $root.Values.apiKeys.components) (not (hasKey $env "API_KEYS")) -}}
{{- range $k := keys $env | sortAlpha }}
- name: {{ $k }}
  value: {{ tpl (toString (get $env $k)) $root | quote }}
{{- end }}
{{- if $withKeys }}
- name: API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $root.Values.apiKeys.secretKey }}
{{- end }}
{{- if not (hasKey $env "LOG_ID_KEY") }}
- name: LOG_ID_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "scalerec.logIdKeySecretName" $root }}
      key: {{ $root.Values.logIdKey.secretKey }}
{{- end }}
{{- /* Names extraEnv brings itself: a Kafka credential there replaces the chart's secretKeyRef. */}}
{{- $extra := list }}
{{- range $c.extraEnv }}{{ $extra = append $extra .name }}{{ end }}
{{- if include "scalerec.kafkaSasl" $root }}
{{- $sasl := $root.Values.kafka.sasl }}
{{- range $name, $key := dict "KAFKA_SASL_USERNAME" $sasl.usernameKey "KAFKA_SASL_PASSWORD" $sasl.passwordKey }}
{{- if not (or (hasKey $env $name) (has $name $extra)) }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $sasl.existingSecret | quote }}
      key: {{ $key | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- $tls := $root.Values.kafka.tls }}
{{- if and $tls.keyPasswordKey (include "scalerec.kafkaTlsMounted" (list $root $c)) (not (hasKey $env "KAFKA_SSL_KEY_PASSWORD")) (not (has "KAFKA_SSL_KEY_PASSWORD" $extra)) }}
- name: KAFKA_SSL_KEY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $tls.existingSecret | quote }}
      key: {{ $tls.keyPasswordKey | quote }}
{{- end }}
{{- with $c.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Container securityContext: the hardened default, per component overridable. */}}
{{- define "scalerec.containerSecurityContext" -}}
{{- toYaml .securityContext -}}
{{- end -}}

{{/*
Volumes every scalerec pod needs with a read-only root filesystem:
/tmp, DATA_DIR (shared PVC or scratch), the model repository when used. (list $root $c)
*/}}
{{- define "scalerec.volumes" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $c.tmpSizeLimit }}
{{- if ne $c.name "triton" }}
- name: data
{{- if $root.Values.persistence.data.shared }}
  persistentVolumeClaim:
    claimName: {{ include "scalerec.dataClaim" $root }}
{{- else }}
  emptyDir:
    sizeLimit: {{ $root.Values.persistence.data.scratchSizeLimit }}
{{- end }}
{{- end }}
{{- if $c.modelRepositoryAccess }}
- name: model-repository
{{- if include "scalerec.modelRepoIsObjectStorage" $root }}
  emptyDir:
    sizeLimit: {{ $root.Values.modelRepository.objectStorage.sizeLimit }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ include "scalerec.modelRepoClaim" $root }}
    readOnly: {{ ne $c.modelRepositoryAccess "write" }}
{{- end }}
{{- end }}
{{- if $c.shmSizeLimit }}
{{- /* /dev/shm is 64Mi by default: too small for NCCL between GPUs and Triton's Python backend. */}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $c.shmSizeLimit }}
{{- end }}
{{- if include "scalerec.modelVersionCounter" . }}
{{- /* The service account's token for the trainer container alone (automountServiceAccountToken stays off,
so the model-sync sidecar never gets it): what an automounted token would be, with the cluster's CA. */}}
- name: api-token
  projected:
    sources:
      - serviceAccountToken: {path: token, expirationSeconds: 3607}
      - configMap: {name: kube-root-ca.crt, items: [{key: ca.crt, path: ca.crt}]}
      - downwardAPI: {items: [{path: namespace, fieldRef: {apiVersion: v1, fieldPath: metadata.namespace}}]}
{{- end }}
{{- if include "scalerec.kafkaTlsMounted" . }}
{{- $tls := $root.Values.kafka.tls }}
- name: kafka-tls
  secret:
    secretName: {{ $tls.existingSecret | quote }}
    {{- /* Only the keys named: a missing one keeps the pod from starting, with the key's name in its events. */}}
    items:
      {{- range compact (list $tls.caKey $tls.certKey $tls.keyKey) | uniq }}
      - {key: {{ . | quote }}, path: {{ . | quote }}}
      {{- end }}
{{- end }}
{{- with $c.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "scalerec.volumeMounts" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
- name: tmp
  mountPath: /tmp
{{- if ne $c.name "triton" }}
- name: data
  mountPath: {{ $root.Values.persistence.data.mountPath }}
{{- end }}
{{- if $c.modelRepositoryAccess }}
- name: model-repository
  mountPath: {{ $root.Values.modelRepository.mountPath }}
  {{- /* Object-storage mirrors are written by the sync sidecar only. */}}
  readOnly: {{ ne $c.modelRepositoryAccess "write" }}
{{- end }}
{{- if $c.shmSizeLimit }}
- name: dshm
  mountPath: /dev/shm
{{- end }}
{{- if include "scalerec.kafkaTlsMounted" . }}
- name: kafka-tls
  mountPath: {{ include "scalerec.kafkaTlsDir" $root }}
  readOnly: true
{{- end }}
{{- if include "scalerec.modelVersionCounter" . }}
- name: api-token
  mountPath: {{ include "scalerec.apiTokenDir" $root }}
  readOnly: true
{{- end }}
{{- with $c.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Native sidecar (init container with restartPolicy Always) that mirrors the model
repository from/to object storage. Main containers start only after the first sync
(startupProbe on a marker file). Readers mirror the remote; writers (the trainer, and
the evaluator, which promotes) copy both ways and sync once more on SIGTERM, so a
finished Job's last version or a promotion is not lost. (list $root $c)
*/}}
{{- define "scalerec.modelSyncSidecar" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $os := $root.Values.modelRepository.objectStorage -}}
{{- $dir := $root.Values.modelRepository.mountPath -}}
{{- $upload := eq $c.modelRepositoryAccess "write" -}}
{{- /* Writers (trainer, evaluator) also read what the others wrote (versions, champion): two-way copy, newer file wins. */ -}}
{{- $pull := ternary (printf "rclone copy --update \"$REMOTE\" %s" $dir) (printf "rclone sync \"$REMOTE\" %s" $dir) $upload -}}
- name: model-sync
  image: "{{ $os.image.repository }}:{{ $os.image.tag }}"
  imagePullPolicy: {{ $os.image.pullPolicy }}
  restartPolicy: Always
  command: ["/bin/sh", "-c"]
  args:
    - |
      {{- /* rclone's exit status 3 is "directory not found": a fresh bucket (or prefix) with nothing in
      it yet. That is an empty repository, not a failure: otherwise the first sync never succeeds, the
      marker is never written, and on a fresh install no pod (not even the trainer, the one that would
      write the first version) ever starts. */}}
      pull() {
        {{ $pull }}; status=$?
        [ "$status" -eq 3 ] && echo "model sync: nothing at $REMOTE yet (rclone: directory not found): an empty repository; check the remote if one should be there" >&2
        [ "$status" -eq 0 ] || [ "$status" -eq 3 ]
      }
      {{- if $upload }}
      {{- /* A version deleted on purpose (the trainer's KEEP_VERSIONS) leaves `<model>/.pruned-<N>`: copying
      alone would keep it in the bucket for ever, pull it back into the writers and mirror it into every
      reader. Whoever has it after a pull (so the bucket or this copy does) deletes it here and in the bucket
      before uploading; readers lose it at their next sync. Not a version this pull says is served (a
      champion file or a config's version policy): a trainer that pruned on a copy a minute old may have
      marked one the evaluator serves again (an experiment's). Only all-digit versions: a marker's name comes
      from the bucket. A delete the bucket refuses is said, and the upload still runs. */}}
      forget_pruned() {
        for marker in {{ $dir }}/*/.pruned-*; do
          version="${marker##*/.pruned-}"; model="${marker%/.pruned-*}"
          case "$version" in ''|*[!0-9]*) continue ;; esac
          [ -d "$model/$version" ] || continue
          if grep -qx "$version" {{ $dir }}/*/champion 2>/dev/null \
            || grep -Eq "^ *versions: *$version *$" {{ $dir }}/*/config.pbtxt 2>/dev/null; then
            continue
          fi
          echo "model sync: $model/$version was pruned: deleting it here and at $REMOTE" >&2
          rm -rf "$model/$version" || return 1
          rclone purge --retries 1 "$REMOTE/${model##*/}/$version" || [ "$?" -eq 3 ] \
            || echo "model sync: could not delete ${model##*/}/$version at $REMOTE (may these credentials delete?); the next pull brings it back" >&2
        done
      }
      {{- /* Half-written (staging) and half-deleted folders are this pod's own business. */}}
      sync_once() { pull && forget_pruned && rclone copy --update --exclude ".staging-*/**" --exclude ".deleting-*/**" {{ $dir }} "$REMOTE"; }
      {{- else }}
      sync_once() { pull; }
      {{- end }}
      {{- /* sh as PID 1 ignores SIGTERM unless trapped; the uploader flushes once more first. */}}
      trap '{{ if $upload }}sync_once; {{ end }}exit 0' TERM
      while true; do
        sync_once && touch /tmp/synced || echo "model sync failed, retrying" >&2
        sleep {{ $os.intervalSeconds }} & wait $!
      done
  env:
    - name: REMOTE
      value: {{ required "modelRepository.objectStorage.remote is required when modelRepository.type=objectStorage" $os.remote | quote }}
    - name: HOME
      value: /tmp
  {{- with $os.credentialsSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $c.securityContext | nindent 4 }}
  resources:
    {{- toYaml $os.resources | nindent 4 }}
  {{- /* Readers must not start on an empty repository; the marker is written after the first sync. */}}
  startupProbe:
    exec: {command: ["test", "-f", "/tmp/synced"]}
    periodSeconds: 5
    failureThreshold: {{ ternary 1000 120 $upload }}
  livenessProbe:
    exec: {command: ["sh", "-c", "test -z \"$(find /tmp/synced -mmin +{{ div (mul $os.intervalSeconds 10) 60 | add 5 }})\""]}
    periodSeconds: 30
  readinessProbe:
    exec: {command: ["test", "-f", "/tmp/synced"]}
    periodSeconds: 10
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: model-repository
      mountPath: {{ $dir }}
{{- end -}}

{{/* Pod-level fields shared by Deployments, Jobs and CronJobs. (list $root $c) */}}
{{- define "scalerec.podCommon" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- /* Training pods carry their own component label so the trainer Service and PDB never select them. */ -}}
{{- $podComponent := default $c.name $c.podComponent -}}
serviceAccountName: {{ include "scalerec.componentName" (list $root $c.name) }}
automountServiceAccountToken: {{ $c.serviceAccount.automountToken }}
securityContext:
  {{- toYaml $c.podSecurityContext | nindent 2 }}
{{- with $c.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $c.topologySpread.enabled }}
{{- /* Spread replicas over zones, then nodes: one node or zone loss takes out only a share. */}}
topologySpreadConstraints:
{{- range $c.topologySpread.topologyKeys }}
  - maxSkew: {{ $c.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $c.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "scalerec.selectorLabels" (list $root $podComponent) | nindent 8 }}
{{- end }}
{{- end }}
terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
{{- end -}}

{{/* Resources with the GPU limit added when the component asks for GPUs. */}}
{{- define "scalerec.resources" -}}
{{- $c := . -}}
{{- $r := deepCopy $c.resources -}}
{{- if gt (int (default 0 $c.gpus)) 0 -}}
{{- $limits := default dict $r.limits -}}
{{- $_ := set $limits "nvidia.com/gpu" (int $c.gpus) -}}
{{- $_ := set $r "limits" $limits -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}

{{/* Probes of an HTTP service container. */}}
{{- define "scalerec.probes" -}}
startupProbe:
  {{- toYaml .probes.startup | nindent 2 }}
livenessProbe:
  {{- toYaml .probes.liveness | nindent 2 }}
readinessProbe:
  {{- toYaml .probes.readiness | nindent 2 }}
{{- end -}}

{{/*
"true" when any ScaleRec service is enabled (a load-tests-only release has none,
and then needs no backends, claims or Secret).
*/}}
{{- define "scalerec.anyService" -}}
{{- range $name := list "collector" "preprocessor" "trainer" "ranker" "evaluator" -}}
{{- if (get $.Values.components $name).enabled -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when an enabled component mounts the model repository. */}}
{{- define "scalerec.anyModelRepositoryUser" -}}
{{- range $name := list "trainer" "ranker" "evaluator" "triton" -}}
{{- $c := get $.Values.components $name -}}
{{- if and $c.enabled $c.modelRepositoryAccess -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* Fail early on configurations that would deploy but not work. */}}
{{- define "scalerec.validate" -}}
{{- $v := .Values -}}
{{- $embedded := or (not $v.kafka.bootstrap) (not $v.hbase.thrift) -}}
{{- if and (include "scalerec.anyService" .) $embedded (not $v.persistence.data.shared) -}}
{{- fail "kafka.bootstrap and hbase.thrift are empty (embedded SQLite backends) but persistence.data.shared=false: each pod would get its own bus and store. Set the backends, or persistence.data.shared=true (single node)." -}}
{{- end -}}
{{- if gt (int $v.kafka.minInsyncReplicas) (int $v.kafka.replicationFactor) -}}
{{- fail (printf "kafka.minInsyncReplicas (%v) > kafka.replicationFactor (%v): Kafka would refuse every acks=all write." $v.kafka.minInsyncReplicas $v.kafka.replicationFactor) -}}
{{- end -}}
{{- if and $v.components.preprocessor.keda.enabled (not $v.kafka.bootstrap) -}}
{{- fail "components.preprocessor.keda.enabled needs kafka.bootstrap: KEDA scales on Kafka consumer lag." -}}
{{- end -}}
{{- $pre := include "scalerec.component" (list . "preprocessor") | fromYaml -}}
{{- if and $pre.keda.enabled $pre.autoscaling.enabled -}}
{{- fail "components.preprocessor: use keda.enabled or autoscaling.enabled, not both (KEDA owns an HPA for the same Deployment)." -}}
{{- end -}}
{{- $t := $v.components.trainer.training -}}
{{- if and $v.persistence.data.shared (gt (int $t.torchrun.nnodes) 1) (or $t.job.enabled $t.cronJob.enabled) -}}
{{- fail "components.trainer.training.torchrun.nnodes > 1 spans nodes, but persistence.data.shared mounts one ReadWriteOnce claim: use external backends (persistence.data.shared=false)." -}}
{{- end -}}
{{- if and (eq $v.modelRepository.type "objectStorage") (not $v.modelRepository.objectStorage.remote) -}}
{{- fail "modelRepository.type=objectStorage needs modelRepository.objectStorage.remote" -}}
{{- end -}}
{{- $k := $v.kafka -}}
{{- if and (hasPrefix "SASL_" $k.securityProtocol) (not $k.sasl.existingSecret) -}}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.existingSecret: a Secret with the SASL user name (key kafka.sasl.usernameKey=%s) and password (key kafka.sasl.passwordKey=%s)." $k.securityProtocol $k.sasl.usernameKey $k.sasl.passwordKey) -}}
{{- end -}}
{{- if and $k.tls.existingSecret (not (has $k.securityProtocol (list "SSL" "SASL_SSL"))) -}}
{{- fail (printf "kafka.tls.existingSecret is set but kafka.securityProtocol=%s does not use TLS: set SSL or SASL_SSL, or leave kafka.tls.existingSecret empty." $k.securityProtocol) -}}
{{- end -}}
{{- if ne (empty $k.tls.certKey) (empty $k.tls.keyKey) -}}
{{- fail (printf "kafka.tls.certKey (%q) and kafka.tls.keyKey (%q) go together: mutual TLS needs the client certificate and its key, so set both or neither." $k.tls.certKey $k.tls.keyKey) -}}
{{- end -}}
{{- if and $k.tls.keyPasswordKey (not $k.tls.keyKey) -}}
{{- fail (printf "kafka.tls.keyPasswordKey (%q) is the passphrase of the client key, but kafka.tls.keyKey is empty: name the key it unlocks (with kafka.tls.certKey), or leave kafka.tls.keyPasswordKey empty." $k.tls.keyPasswordKey) -}}
{{- end -}}
{{- if and $k.tls.certKey (not $k.tls.existingSecret) -}}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey name keys of kafka.tls.existingSecret, which is empty: name the Secret that holds the client certificate and key." -}}
{{- end -}}
{{- if and $k.tls.existingSecret (not $k.tls.caKey) (not $k.tls.certKey) -}}
{{- fail "kafka.tls.existingSecret is set but kafka.tls.caKey, kafka.tls.certKey and kafka.tls.keyKey are all empty: nothing of it to mount." -}}
{{- end -}}
{{- end -}}
