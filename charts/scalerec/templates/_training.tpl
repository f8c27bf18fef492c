{{/* Job spec shared by the training Job and CronJob. (list $root $c nnodes nproc rdzvService) */}}
{{- define "scalerec.trainingJobSpec" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $t := $c.training -}}
{{- $nnodes := int (index . 2) -}}
{{- $nproc := int (index . 3) -}}
{{- $rdzv := index . 4 -}}
backoffLimit: {{ $t.job.backoffLimit }}
activeDeadlineSeconds: {{ $t.job.activeDeadlineSeconds }}
{{- with $t.job.ttlSecondsAfterFinished }}
ttlSecondsAfterFinished: {{ . }}
{{- end }}
{{- if gt $nnodes 1 }}
completionMode: Indexed
completions: {{ $nnodes }}
parallelism: {{ $nnodes }}
{{- end }}
template:
  metadata:
    labels:
      {{- include "scalerec.selectorLabels" (list $root "trainer-training") | nindent 6 }}
  spec:
    {{- include "scalerec.podCommon" (list $root $c) | nindent 4 }}
    restartPolicy: Never
    {{- if gt $nnodes 1 }}
    subdomain: {{ $rdzv }}
    {{- end }}
    {{- if and $c.modelRepositoryAccess (include "scalerec.modelRepoIsObjectStorage" $root) }}
    initContainers:
      {{- include "scalerec.modelSyncSidecar" (list $root $c) | nindent 6 }}
    {{- end }}
    containers:
      - name: trainer
        image: {{ include "scalerec.image" (list $root $c) | quote }}
        imagePullPolicy: {{ $c.image.pullPolicy }}
        {{- if and (eq $nnodes 1) (eq $nproc 1) }}
        command: ["python", "-m", {{ $t.module | quote }}]
        {{- else }}
        command: ["torchrun"]
        {{- end }}
        args:
          {{- if gt $nnodes 1 }}
          - --nnodes={{ $nnodes }}
          - --nproc-per-node={{ $nproc }}
          - --node-rank=$(NODE_RANK)
          - --master-addr=$(JOB_NAME)-0.{{ $rdzv }}
          - --master-port={{ $t.torchrun.port }}
          - -m
          - {{ $t.module }}
          {{- else if gt $nproc 1 }}
          - --standalone
          - --nnodes=1
          - --nproc-per-node={{ $nproc }}
          - -m
          - {{ $t.module }}
          {{- end }}
          {{- range $t.args }}
          - {{ . | quote }}
          {{- end }}
        env:
          {{- /* Launcher variables (not settings): the Job's name and this pod's index. */}}
          - name: JOB_NAME
            valueFrom:
              fieldRef:
                fieldPath: metadata.labels['batch.kubernetes.io/job-name']
          - name: NODE_RANK
            valueFrom:
              fieldRef:
                fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
          {{- include "scalerec.env" (list $root $c) | trim | nindent 10 }}
        {{- with $c.envFrom }}
        envFrom:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- if gt $nnodes 1 }}
        ports:
          - {name: rdzv, containerPort: {{ $t.torchrun.port }}, protocol: TCP}
        {{- end }}
        resources:
          {{- include "scalerec.resources" $c | nindent 10 }}
        securityContext:
          {{- include "scalerec.containerSecurityContext" $c | nindent 10 }}
        volumeMounts:
          {{- include "scalerec.volumeMounts" (list $root $c) | nindent 10 }}
    volumes:
      {{- include "scalerec.volumes" (list $root $c) | nindent 6 }}
{{- end -}}
