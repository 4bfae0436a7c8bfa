# every call: keep the carried pieces on the machine (carried files live only for their call)
mkdir -p /root/stash
for f in .carry/q?? .carry/p??; do [ -f "$f" ] && cp "$f" /root/stash/; done
export PYTHONPATH=/tmp/site:$PWD PRUNESCOPE_CACHE=/root/cache HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
