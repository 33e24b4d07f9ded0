#ifndef CLM_CXGBOOST_SHIM_H
#define CLM_CXGBOOST_SHIM_H

// XGBoost's C API (Debian's libxgboost-dev): the gradient boosting baselines are fitted and
// scored through it, so that they are the library practitioners use, not a re-implementation.
#include <xgboost/c_api.h>

#endif
